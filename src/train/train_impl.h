/* Internals shared by the single-process, data-parallel and parameter-server
 * trainers. */
#ifndef PETREL_TRAIN_IMPL_H
#define PETREL_TRAIN_IMPL_H

#include "petrel/train.h"

/* PETREL_ERR_INVALID when d's features or classes do not fit m; which names the
 * dataset ("training", "test") in the message. */
petrel_err petreli_check_fit(const petrel_model *m, const petrel_dataset *d, const char *which);

/* Evaluates m on shard `rank` of `size` of d (the batcher's sharding rule): the
 * number of correct predictions, the summed loss and the number of samples. */
petrel_err petreli_evaluate_shard(petrel_model *m, const petrel_dataset *d, int64_t batch, int rank,
                                  int size, double *hits, double *loss_sum, double *count);

/* The end of a run: saves out_dir/model.ckpt (when out_dir is set), fills r's wall
 * time and peak memory, and writes the "final" event (when mf is set). */
petrel_err petreli_finish_run(petrel_model *m, const char *out_dir, petrel_metrics *mf, int workers,
                              double t_start, petrel_train_result *r);

/* Begins the "final" event with the fields every trainer writes, from r (wall time
 * and peak memory filled); the caller adds its own and ends the event. */
void petreli_final_event_begin(petrel_metrics *mf, const char *model, const petrel_train_result *r);

#endif
