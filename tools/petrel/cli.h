/* Shared pieces of the petrel command-line tool: one cmd_<sub>.c per subcommand. */
#ifndef PETREL_CLI_H
#define PETREL_CLI_H

#include "apps.h"
#include "petrel/petrel.h"

/* Exit codes: 0 success, 1 failure, 2 usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Prints "petrel: error: <what>: <why>" (why from petrel_errmsg() or strerror(err))
 * and an optional "hint: ..." line; returns CLI_FAIL. */
int cli_fail(petrel_err err, const char *what, const char *hint);

/* Prints "petrel: error: <message>" and "try 'petrel <sub> --help'"; returns CLI_USAGE. */
int cli_usage_error(const char *sub, const char *fmt, ...) PETREL_PRINTF(2, 3);

/* Parses a whole decimal integer or float; false on junk or overflow. */
bool cli_parse_i64(const char *s, int64_t *out);
bool cli_parse_f32(const char *s, float *out);

int cmd_train(int argc, char **argv);

/* petrel train's Hogwild! path (train_hogwild.c): model is a petrel_hogwild_model
 * (cli_hogwild_model parses "logreg", "svm", "softmax", "mf"), mode a
 * petrel_hogwild_mode; lr <= 0 takes the engine's default; l2 >= 0, decay in
 * (0, 1] as in petrel_hogwild_config. cli_train_mf
 * reads the ratings file data and, without test_path, holds out test_fraction of
 * it (seeded by cfg->seed). Both return the exit code. */
bool cli_hogwild_model(const char *name, int *model);
/* The engine's config from petrel train's flags (threads, epochs, seed, shuffle
 * from cfg). */
petrel_hogwild_config cli_hogwild_config(int model, int mode, const petrel_train_config *cfg,
                                         float lr, float l2, float decay);
int cli_train_hogwild(int model, int mode, const petrel_dataset *train, const petrel_dataset *test,
                      const petrel_train_config *cfg, float lr, float l2, float decay);
int cli_train_mf(const char *data, const char *test_path, double test_fraction, int rank, int mode,
                 const petrel_train_config *cfg, float lr, float l2, float decay);
/* Outside a job: runs this `petrel train` command line as a local job of rank 0,
 * `servers` servers and `workers` workers (petrel_launch_run); the exit code. */
int cli_launch_train(int argc, char **argv, int servers, int workers);

/* petrel train's parameter-server path (train_ps.c). */
typedef struct cli_ps_options {
    int servers, workers;
    petrel_ps_train_config train; /* sync, straggler, mf rank, Hogwild! threads */
    const char *resume;           /* --resume DIR, or NULL */
    int64_t snapshot_every;       /* --snapshot-every N (0: no snapshots) */
} cli_ps_options;

cli_ps_options cli_ps_options_default(void);
/* "NODE:FACTOR" into o->train; false when malformed. */
bool cli_parse_straggler(const char *s, cli_ps_options *o);
/* Outside a job, launches 1 + servers + workers local nodes running this same
 * command; inside one, runs this node. model_name: mlp, cnn, softmax (dense
 * models), logreg (sparse), or mf (ratings); with o->train.hogwild, logreg, svm,
 * softmax (sparse) or mf. Returns the exit code. */
int cli_train_ps(int argc, char **argv, const char *model_name, petrel_model_options *mo,
                 const char *data, const char *test_path, petrel_train_config *cfg,
                 const cli_ps_options *o);
int cmd_launch(int argc, char **argv);
int cmd_data(int argc, char **argv);

#endif
