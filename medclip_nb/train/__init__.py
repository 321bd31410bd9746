"""`train(cfg)`: the one training loop, used by the CLI, the notebooks and torchrun.

A plain loop in the style of nanoGPT: data -> model -> AdamW with a warmup + cosine schedule
-> steps with AMP on GPU, gradient clipping, a non-finite-loss guard, periodic validation,
early stopping, atomic checkpoints and a JSON Lines metrics log.

    loop.py             train(): setup_run, train_one_epoch (fetch, move, step, guard, log, validate, save) until done
    step.py             TrainStep, the one training step (tools/bench.py times the same) and its validation loss;
                        build_train_step(): optimizer, schedule, scaler, guard
    guard.py            the non-finite-loss guard, syncing (CPU) or sync-free (CUDA), owner of its counters
    state.py            TrainResult, MetricsLog, Progress, Checkpointer, output folder, resume
    sanity.py           overfit_one_batch(): can the model learn one fixed batch (notebook 02's check)
    loaders.py          datasets, tokenizer, loaders and unpaired items of a run
    val_metrics.py      ValMetrics: zero-shot accuracy and R@K on a fixed validation subset, at each validation
    tensorboard_log.py  TensorBoardLog: the metrics rows as TensorBoard scalars

Distributed data parallel runs start under torchrun (`WORLD_SIZE` > 1): one process per GPU,
each with its share of every epoch; only rank 0 prints, logs and writes checkpoints.

Files in `model_save_path`:
    checkpoint_epoch_N.pth  after each complete epoch (the seed script's name)
    last.pth                after each epoch, every `save_steps` steps and at the end (resumable)
    best.pth                at each new lowest validation loss
    last_good.pth           only when too many non-finite losses in a row stopped the run: the
                            weights of the last good step; position and RNG at the first
                            skipped step (CPU guard) or where the streak was noticed (CUDA)
    metrics.jsonl           one JSON object per line: step, epoch, split ('train' rows every
                            `log_every` steps, averaged over them; 'val' rows at each validation),
                            loss, lr, temperature (1 / logit_scale), logit_scale, pairs_per_s,
                            time (seconds of training, summed over resumes), chance (the loss
                            of scoring every pair alike at the row's batch sizes, ln(batch) for
                            the softmax losses; null for siglip); 'val' rows also hold
                            the validation subset's zero-shot accuracy and R@1/5/10
                            (val_metrics.py, `val_metrics_samples`); with the sync-free
                            guard (CUDA) train rows also hold nonfinite_skipped, the steps of
                            the row's window that were skipped
    events.out.tfevents.*   with `tensorboard: true`: the same rows as TensorBoard scalars, the run
                            named by its folder under `tensorboard --logdir checkpoints/`
                            (medclip_nb/train/tensorboard_log.py); metrics.jsonl stays the record
"""

from medclip_nb.train.loop import train
from medclip_nb.train.sanity import overfit_one_batch
from medclip_nb.train.state import open_resume_point, restore_training_state
from medclip_nb.train.step import build_train_step

__all__ = [
    "build_train_step",
    "open_resume_point",
    "overfit_one_batch",
    "restore_training_state",
    "train",
]
