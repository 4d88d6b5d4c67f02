"""The HF-native AlignGPT under lmms-eval: `lmms-eval --model aligngpt --model_args pretrained=HF_FOLDER`.

`aligngpt_plugin.evaluation.lmms_model.AlignGPT` sends a folder whose config says `llava_aligngpt` here. The
model is lmms-eval's own `llava_hf` (`lmms_eval.models.simple.llava_hf.LlavaHf`: transformers' classes,
`AutoProcessor`, left padding, accelerate) with three changes:

- its model map gains `llava_aligngpt` -> `AlignGPTLlavaForConditionalGeneration`;
- the prompt is LLaVA-1.5's (lmms-eval's `VICUNA_CHAT_TEMPLATE`, the `vicuna_v1` conversation that AlignGPT
  is trained and evaluated with) unless `chat_template` is given: the llava-hf template that the converters
  save with the processor takes content lists, and `llava_hf` passes strings;
- `batch_size` > 1 works (`llava_hf` asserts 1): one left-padded `generate` per batch, the answers cut at the
  task's `until` strings;

and `ALIGNGPT_GATE_DUMP=FILE` appends each sample's gate weights with its task and document id, as the
LLaVA-original path does (`DocumentFetches` notes the documents each batch fetches). `device` defaults to
`cuda` where CUDA is, else the CPU. lmms-eval's `llava_hf` module imports `decord` for videos; where decord
is absent, a stand-in that raises on use lets image tasks run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import torch

from aligngpt_plugin.evaluation.lmms import HF_MODEL_TYPE, DocumentFetches
from aligngpt_plugin.integrations.hf.modeling_aligngpt import AlignGPTLlavaForConditionalGeneration
from aligngpt_plugin.integrations.llava.loader import GATE_DUMP_ENV, dump_gate_weights, set_gate_sample_ids


def _decord_stand_in() -> None:
    """lmms-eval's llava_hf imports decord's VideoReader at its top; only video tasks use it."""
    if "decord" in sys.modules or importlib.util.find_spec("decord") is not None:
        return
    module = types.ModuleType("decord")

    def unavailable(*args, **kwargs):
        raise ImportError("video tasks need decord (pip install decord); image tasks do not")

    module.VideoReader, module.cpu = unavailable, unavailable
    sys.modules["decord"] = module


_decord_stand_in()
try:
    import lmms_eval.models.simple.llava_hf as lmms_llava_hf
    from lmms_eval import utils as lmms_utils
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("the `aligngpt` lmms-eval model needs lmms-eval: pip install 'aligngpt-plugin[lmms]'") from e

lmms_llava_hf.model_map.setdefault(HF_MODEL_TYPE, AlignGPTLlavaForConditionalGeneration)


class AlignGPTHf(lmms_llava_hf.LlavaHf):
    """lmms-eval's `llava_hf` model for HF-native AlignGPT folders (see the module docstring).

    Same `--model_args` as `llava_hf` (pretrained, dtype, batch_size, attn_implementation, chat_template, ...).
    """

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 chat_template: str | None = None, **kwargs) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device_map is None:
            # llava_hf's default "" is what its data-parallel branch expects; in one process transformers
            # refuses "" as a device map, so the model goes where `device` says
            device_map = "" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else device
        super().__init__(pretrained=pretrained, device=device, device_map=device_map,
                         chat_template=chat_template or lmms_llava_hf.VICUNA_CHAT_TEMPLATE, **kwargs)
        self._fetched: list[dict] = []
        if os.environ.get(GATE_DUMP_ENV):
            dump_gate_weights(self.model, os.environ[GATE_DUMP_ENV])
        set_gate_sample_ids(self.model, self._batch_ids)

    def _batch_ids(self, batch: int) -> list[dict] | None:
        fetched = list(self._fetched)
        self._fetched.clear()  # in place: the `DocumentFetches` view writes into this list
        return fetched if len(fetched) == batch else None

    def generate_until(self, requests) -> list[str]:
        """`llava_hf`'s at batch size 1, `generate_batched` above it; the documents each `generate` answers
        are noted for the gate dump.

        Args:
            requests: lmms-eval's `Instance`s, each with `args` (context, generation kwargs, doc_to_visual,
                doc id, task, split).
        Returns:
            One answer per request, in the requests' order.
        """
        tasks = self.task_dict
        self._fetched.clear()
        self.task_dict = DocumentFetches(tasks, self._fetched)
        try:
            if self.batch_size_per_gpu == 1:
                return super().generate_until(requests)
            return self.generate_batched(requests)
        finally:
            self.task_dict = tasks

    def prompt(self, context: str, images: int) -> str:
        """The chat-templated prompt of one request, as `llava_hf` builds it: `<image>` tokens first where the
        task's text has none.

        Args:
            context: the task's question text.
            images: how many images the request has.
        Returns:
            The prompt string, ending with the assistant's turn.
        """
        if images and lmms_llava_hf.DEFAULT_IMAGE_TOKEN not in context:
            context = " ".join([lmms_llava_hf.DEFAULT_IMAGE_TOKEN] * images) + "\n" + context
        self.tokenizer.chat_template = self.chat_template
        return self.tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=False,
                                                  add_generation_prompt=True)

    def generate_batched(self, requests) -> list[str]:
        """Greedy or sampled answers, `batch_size` requests per `generate` (longest context first, as lmms-eval
        orders them), left-padded; each answer ends at the first of the task's `until` strings.

        Args:
            requests: lmms-eval's `Instance`s, as for `generate_until`.
        Returns:
            One answer per request, in the requests' order.
        """
        def longest_first(args):
            return -len(self.tok_encode(args[0])), args[0]

        order = lmms_utils.Collator([r.args for r in requests], longest_first, grouping=True)
        answers = []
        for chunk in order.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
            visuals = [self.flatten([doc_to_visual[0](self.task_dict[task][split][doc])])
                       for doc, task, split in zip(doc_ids, tasks, splits)]
            texts = [self.prompt(c, len(v)) for c, v in zip(contexts, visuals)]
            images = [image for v in visuals for image in v]
            inputs = self._image_processor(images=images or None, text=texts, padding=True, return_tensors="pt")
            inputs = inputs.to(self._device, self.model.dtype)
            kwargs = dict(all_gen_kwargs[0])  # lmms-eval groups requests by their generation kwargs
            until = kwargs.get("until") or [self.tok_decode(self.eot_token_id)]
            until = [until] if isinstance(until, str) else until
            temperature = kwargs.get("temperature", 0)
            out = self.model.generate(
                **inputs, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_p=kwargs.get("top_p"), num_beams=kwargs.get("num_beams", 1),
                max_new_tokens=kwargs.get("max_new_tokens", 1024), use_cache=self.use_cache,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eot_token_id)
            for context, text in zip(contexts, self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:],
                                                                           skip_special_tokens=True)):
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                answers.append(text)
                self.cache_hook.add_partial("generate_until", (context, all_gen_kwargs[0]), text)
        return order.get_original(answers)
