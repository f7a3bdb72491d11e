"""``POST /v1/completions``: the legacy text completion, as vLLM serves it, whole or streamed.

The same deterministic words as the chat route, planned per prompt: a prompt is its text's tokens (no
chat template) plus its suffix's, or its token ids; each prompt gets ``n`` choices, numbered prompt by
prompt (choice ``j * n + i``), as OpenAI numbers them. ``sim:say a|b|c`` at the start of a prompt says
exactly those pieces, one chunk each; faults, usage (``stream_options.include_usage``) and the latency
model apply as on the chat route. A stream is vLLM's: one chunk per token with the choice's ``text``, a
finish chunk, the usage chunk when asked for, ``[DONE]``.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from sluice.core import clock

from . import text, tokens
from .chat import _DONE, _GOLDEN, _MALFORMED, _MASK64, _SSE_HEADERS, ChatCompletions, _Plan
from .latency import pause
from .replica import MAX_MODEL_LEN, encode, json_reply
from .schema import CompletionRequest, PromptTokensDetails, TextChoice, TextCompletion, Usage
from .tools import words_in
from .vllm_routes import texts_or_token_lists

_decoder = msgspec.json.Decoder(CompletionRequest)


class Completions(ChatCompletions):
    """The legacy completions route of a replica."""

    async def complete(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``: a deterministic text per prompt and choice, at the modelled speed."""
        stats = self.stats
        stats.completion_requests += 1
        with self._in_flight():
            req = await self._admit(request, _decoder)
            if isinstance(req, web.Response):
                return req
            prompts = texts_or_token_lists(req.prompt)
            if prompts is None:
                return self._refuse(400, "`prompt` must be a string, a list of strings, a list of token ids or a "
                                         "list of lists of token ids.")
            # "body": the request as it arrived (aiohttp keeps the bytes read), to tell a default from a sent value
            self.last_completion = {"prompt": req.prompt, "suffix": req.suffix, "body": msgspec.Raw(await request.read())}
            if req.stream_options is not None and not req.stream:
                return self._refuse(400, "Stream options can only be defined when `stream=True`.")
            injected = await self._apply_faults(request)
            if injected is not None:
                return injected
            suffix = tokens.tokenize(req.suffix) if req.suffix else []
            seqs = [(tokens.tokenize(p) if isinstance(p, str) else [str(t) for t in p]) + suffix for p in prompts]
            max_tokens = req.max_tokens or self.settings.default_max_tokens
            longest = max(len(s) for s in seqs)
            if longest + max_tokens > MAX_MODEL_LEN:
                return self._refuse(
                    400, f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                         f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} in the completion). "
                         "Please reduce the length of the prompt or completion.")
            seed = self.settings.seed if req.seed is None else (self.settings.seed * 1_000_003 + req.seed) & _MASK64
            n = req.n or 1
            plans: list[_Plan] = []
            for p, seq in zip(prompts, seqs):
                key = text.prompt_key(seq, seed)
                words = words_in(p) if isinstance(p, str) else None
                for i in range(n):
                    plans.append(_Plan(words=list(words), finish_reason="stop") if words is not None else
                                 self._plan((key + i * _GOLDEN) & _MASK64, max_tokens, bool(req.ignore_eos),
                                            req.min_tokens or 0))
            if self.faults.active and self.faults.spec.say_first is not None:
                for plan in plans:
                    plan.words.insert(0, self.faults.spec.say_first)
            echoed = [p if req.echo and isinstance(p, str) else "" for p in prompts for _ in range(n)]
            prompt = [t for s in seqs for t in s]
            async with self.latency.slot():
                usage = Usage(prompt_tokens=len(prompt), completion_tokens=sum(len(p.words) for p in plans),
                              total_tokens=0, prompt_tokens_details=PromptTokensDetails(cached_tokens=0))
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
                stats.prompt_tokens += usage.prompt_tokens
                if req.stream:
                    include_usage = req.stream_options is not None and bool(req.stream_options.include_usage)
                    return await self._stream_text(request, req.model, plans, echoed, usage, include_usage, prompt)
                await self._prefill(prompt, usage)
                with self._decoding():
                    await pause(self.latency.step_s() * max(max(len(p.words) for p in plans) - 1, 0))
                stats.completion_tokens += usage.completion_tokens
                return json_reply(TextCompletion(
                    id=self._new_id("cmpl"), object="text_completion", created=int(clock.now()), model=req.model,
                    choices=[TextChoice(index=i, text=echoed[i] + "".join(p.words), finish_reason=p.finish_reason)
                             for i, p in enumerate(plans)], usage=usage))

    async def _stream_text(self, request: web.Request, model: str, plans: list[_Plan], echoed: list[str],
                           usage: Usage, include_usage: bool, prompt: list[str]) -> web.StreamResponse:
        """One chunk per token and live choice per decode step (an echoed prompt first), each choice's finish
        chunk after its last token, the usage chunk when asked for, then [DONE]."""
        stats = self.stats
        stats.streams_started += 1
        head = {"id": self._new_id("cmpl"), "object": "text_completion", "created": int(clock.now()), "model": model}

        def event(choices: list[TextChoice], with_usage: Usage | msgspec.UnsetType = msgspec.UNSET) -> bytes:
            chunk = TextCompletion(**head, choices=choices, usage=with_usage)
            return b"data: " + encode(chunk) + b"\n\n"

        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        spec, cut, stall, bad = self.faults.in_stream()
        sent = 0
        try:
            if await self._opening(request, resp, prompt, usage, spec):
                return resp
            if stall == 0:
                return await self._stall(request, resp)
            if bad == 0:
                await resp.write(_MALFORMED)
            if any(echoed):
                await resp.write(b"".join(event([TextChoice(index=i, text=e)]) for i, e in enumerate(echoed) if e))
            if cut == 0:
                return self._cut(request, resp)
            loop = asyncio.get_running_loop()
            deadline = loop.time()
            with self._decoding():
                for step in range(max(len(p.words) for p in plans)):
                    if step and self.latency.decode_s:
                        deadline += self.latency.step_s()
                        await pause(deadline - loop.time())
                    for i, plan in enumerate(plans):
                        if step >= len(plan.words):
                            continue
                        await resp.write(event([TextChoice(index=i, text=plan.words[step])]))
                        sent += 1
                        stats.completion_tokens += 1
                        ended = await self._fault(sent, (cut, stall, bad), request, resp, _MALFORMED)
                        if ended is not None:
                            return ended
                        if step == len(plan.words) - 1:
                            await resp.write(event([TextChoice(index=i, text="", finish_reason=plan.finish_reason)]))
            await resp.write_eof((event([], usage) if include_usage else b"") + _DONE)
            stats.streams_completed += 1
            return resp
        except ConnectionError:
            stats.client_disconnects += 1
            return resp
