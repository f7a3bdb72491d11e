"""What a Responses request may carry that a chat-completions upstream cannot take: each feature
is dropped by a rule named here and reported to the caller of ``to_chat`` (to log and count),
never dropped silently. The names are stable: logs and metrics key on them. What cannot be
dropped without changing the answer the caller relies on is refused instead (``decode``).
"""

from __future__ import annotations

# name -> the rule, as documentation and as the text a log line can cite
DROP_RULES: dict[str, str] = {
    "reasoning_items": "reasoning items of earlier turns (and their encrypted_content) are not sent back: chat has no place for them",
    "reasoning.summary": "chat completions return no reasoning summaries; the effort is kept as reasoning_effort",
    "reasoning.context": "which turns' reasoning the model keeps is OpenAI's; a chat upstream sees none of it",
    "reasoning.mode": "OpenAI's reasoning mode has no chat equivalent",
    "include": "the extra output fields include asks for (encrypted reasoning, logprobs, hosted-tool results) are not produced from a chat upstream",
    "hosted_tools": "OpenAI's hosted tools (web search, file search, code interpreter, image generation, computer use, MCP, tool search) run only at OpenAI",
    "function_call_output.image": "chat tool messages carry text only; images inside a function_call_output are dropped",
    "output_text.annotations": "annotations on earlier assistant text are dropped; the text is kept",
    "message.phase": "the phase of an earlier assistant message (commentary, final answer) has no chat equivalent",
    "prompt_cache_breakpoint": "explicit prompt-cache breakpoints have no chat equivalent; the upstream caches prefixes on its own",
    "prompt_cache_options": "OpenAI's prompt-cache options have no meaning to another backend",
    "prompt_cache_retention": "OpenAI's prompt-cache retention has no meaning to another backend",
    "truncation": "truncation auto is not applied: an input past the context window is refused by the upstream",
    "max_tool_calls": "max_tool_calls bounds hosted tools only, and those do not run here",
    "top_logprobs": "logprobs are not returned in Responses output",
    "service_tier": "OpenAI's service tier has no meaning to another backend",
    "stream_options": "stream obfuscation is not added: the stream carries no obfuscation field",
    "context_management": "OpenAI's server-side compaction runs only at OpenAI",
    "image": "OpenAI's image context compression has no chat equivalent",
    "access_programs": "OpenAI's access programs have no meaning to another backend",
    "client_metadata": "Codex's client metadata is for OpenAI's telemetry; it is not sent upstream",
}

