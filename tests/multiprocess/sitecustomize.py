"""Test-only, loaded by every process of a multi-process test run through PYTHONPATH (tests/multiprocess).

With ALIGNGPT_RANK_DUMP=DIR set, each training process writes DIR/rank<R>.pt after `Trainer.train`: how
the Trainer ran it (parallel mode, what wraps the model, world size), the losses it logged, and the full
values of the alignment module, the projector and lm_head (gathered first where ZeRO-3 partitioned
them), so that the tests can compare the ranks with each other and with a single-process run.
Without the variable it does nothing.

ALIGNGPT_PLANT_UNREDUCED=1 plants a fault for the tests to catch: DeepSpeed ZeRO-1/2 skip the averaging of
gradients across the ranks, so each rank updates its partition from its own batch only.
"""

import os

if os.environ.get("ALIGNGPT_RANK_DUMP"):
    import functools

    import transformers

    _train = transformers.Trainer.train

    @functools.wraps(_train)
    def _train_and_dump(self, *args, **kwargs):
        if os.environ.get("ALIGNGPT_PLANT_UNREDUCED"):  # here, not at start-up: importing deepspeed prints
            from deepspeed.runtime.zero import stage_1_and_2

            stage_1_and_2.DeepSpeedZeroOptimizer.average_tensor = lambda self, tensor, communication_data_type: None
        out = _train(self, *args, **kwargs)
        _dump(self, os.environ["ALIGNGPT_RANK_DUMP"])
        return out

    def _dump(trainer, folder):
        import torch
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        params = dict(trainer.model.named_parameters())
        state = {}
        for name in sorted(params):  # the same order on every rank: gathering is a collective
            if not any(key in name for key in ("alignment.", "mm_projector.", "lm_head.")):
                continue
            param = params[name]
            if hasattr(param, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([param]):
                    state[name] = param.detach().clone().cpu()
            else:
                state[name] = param.detach().clone().cpu()
        info = {"rank": rank, "world_size": dist.get_world_size() if distributed else 1,
                "parallel_mode": str(trainer.args.parallel_mode), "wrapped": type(trainer.model_wrapped).__name__,
                "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
        os.makedirs(folder, exist_ok=True)
        torch.save({"info": info, "state": state}, os.path.join(folder, f"rank{rank}.pt"))

    transformers.Trainer.train = _train_and_dump
