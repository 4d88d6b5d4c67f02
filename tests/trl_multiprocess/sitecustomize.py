"""Test-only, loaded by every process of a TRL-path test run through PYTHONPATH (tests/trl_multiprocess).

With ALIGNGPT_TRL_DUMP=DIR set, each training process writes DIR/rank<R>.pt after `Trainer.train`: how the
Trainer ran it (parallel mode, what wraps the model, world size), the losses it logged and every parameter
that trained, at full value (gathered first where ZeRO-3 partitioned it), so that the tests can compare the
ranks with each other and with a single-process run. Without the variable it does nothing.

ALIGNGPT_TRL_KILL_AFTER_SAVE=K ends the process as a kill would, right after checkpoint-K is written (exit 3).

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
        self._batches_seen = []
        compute_loss = self.compute_loss

        def compute_and_note(model, inputs, *rest, **kw):  # what each micro-batch held: an image or text only
            self._batches_seen.append("image" if inputs.get("pixel_values") is not None else "text")
            return compute_loss(model, inputs, *rest, **kw)

        self.compute_loss = compute_and_note
        self._step_losses = []
        training_step = self.training_step

        def step_and_note(*a, **kw):  # each micro-batch's loss as training_step returns it, not rounded
            loss = training_step(*a, **kw)
            self._step_losses.append(float(loss))
            return loss

        self.training_step = step_and_note
        if os.environ.get("ALIGNGPT_TRL_KILL_AFTER_SAVE"):
            self.add_callback(_KillAfterSave(int(os.environ["ALIGNGPT_TRL_KILL_AFTER_SAVE"])))
        out = _train(self, *args, **kwargs)
        _dump(self, os.environ["ALIGNGPT_TRL_DUMP"])
        return out

    class _KillAfterSave(transformers.TrainerCallback):
        """Ends the process the way a kill does (no clean-up, no final save) once checkpoint-`step` is written."""

        def __init__(self, step):
            self.step = step

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                os._exit(3)

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
                "trainer": type(trainer).__name__, "batches": trainer._batches_seen,
                "step_losses": trainer._step_losses,
                "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
        os.makedirs(folder, exist_ok=True)
        torch.save({"info": info, "state": state}, os.path.join(folder, f"rank{rank}.pt"))

    transformers.Trainer.train = _train_and_dump
