/* Shared pieces of the petrel command-line tool: one cmd_<sub>.c per subcommand. */
#ifndef PETREL_CLI_H
#define PETREL_CLI_H

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
 * (cli_hogwild_model parses "logreg", "svm", "softmax"), mode a petrel_hogwild_mode;
 * lr <= 0 takes the engine's default. Returns the exit code. */
bool cli_hogwild_model(const char *name, int *model);
int cli_train_hogwild(const char *model_name, int model, int mode, const petrel_dataset *train,
                      const petrel_dataset *test, const petrel_train_config *cfg, float lr);
int cmd_launch(int argc, char **argv);
int cmd_data(int argc, char **argv);

#endif
