"""Test-only, loaded by every process of a TRL-path test run through PYTHONPATH (tests/trl_multiprocess).

With ALIGNGPT_TRL_DUMP=DIR set, each training process writes DIR/rank<R>.pt after `Trainer.train`: how the
Trainer ran it (parallel mode, what wraps the model, world size), the losses it logged and every parameter
that trained, at full value (gathered first where ZeRO-3 partitioned it), so that the tests can compare the
ranks with each other and with a single-process run. Without the variable it does nothing.

ALIGNGPT_TRL_PLANT=skip_idle_gate plants a fault for the tests to catch: the alignment module is not run on a
batch without alignment tokens (text-only), so that rank never uses the gate's weights.
"""

import os

if os.environ.get("ALIGNGPT_TRL_DUMP"):
    import functools

    import transformers

    _train = transformers.Trainer.train

    @functools.wraps(_train)
    def _train_and_dump(self, *args, **kwargs):
        if os.environ.get("ALIGNGPT_TRL_PLANT") == "skip_idle_gate":
            from aligngpt_plugin.integrations.hf import modeling_aligngpt

            modeling_aligngpt.idle_term = lambda out: 0.0
            modeling_aligngpt.AlignGPTLlavaModel.idle_alignment = lambda self, like: None
        out = _train(self, *args, **kwargs)
        _dump(self, os.environ["ALIGNGPT_TRL_DUMP"])
        return out

    def _dump(trainer, folder):
        import torch
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        params = dict(trainer.model.named_parameters())
        state = {}
        for name in sorted(params):  # the same order on every rank: gathering is a collective
            param = params[name]
            if not param.requires_grad:
                continue
            if hasattr(param, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([param]):
                    state[name] = param.detach().clone().float().cpu()
            else:
                state[name] = param.detach().clone().float().cpu()
        info = {"rank": rank, "world_size": dist.get_world_size() if distributed else 1,
                "parallel_mode": str(trainer.args.parallel_mode), "wrapped": type(trainer.model_wrapped).__name__,
                "trainer": type(trainer).__name__,
                "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
        os.makedirs(folder, exist_ok=True)
        torch.save({"info": info, "state": state}, os.path.join(folder, f"rank{rank}.pt"))

    transformers.Trainer.train = _train_and_dump
