"""What a Messages request may carry that a chat-completions upstream cannot take: each feature
is dropped by a rule named here and reported to the caller of ``decode`` (to log and count),
never dropped silently. The names are stable: logs and metrics key on them.
"""

from __future__ import annotations

# name -> the rule, as documentation and as the text a log line can cite
DROP_RULES: dict[str, str] = {
    "cache_control": "prompt-caching breakpoints have no chat equivalent; the upstream caches prefixes on its own",
    "thinking": "a thinking budget (enabled or adaptive) has no chat equivalent; the model answers without one",
    "thinking_blocks": "thinking and redacted_thinking blocks of earlier assistant turns are not sent back to the upstream",
    "top_k": "top_k is sent only to models whose upstream takes vLLM's parameters (extra_params: vllm)",
    "citations": "citations on text blocks are dropped; the text is kept",
    "tool_result.is_error": "chat tool messages carry no error flag; the result's content is kept",
    "tool_result.image": "chat tool messages carry text only; images inside a tool_result are dropped",
    "server_tools": "Anthropic's server tools (web search, code execution...) run only at Anthropic",
    "tool_choice.disable_parallel_tool_use": "kept as parallel_tool_calls: false; reported only when tool_choice is none",
    "service_tier": "Anthropic's service tier has no meaning to another backend",
    "container": "Anthropic's code-execution container has no meaning to another backend",
    "mcp_servers": "Anthropic's MCP connector runs only at Anthropic",
    "context_management": "Anthropic's context editing runs only at Anthropic",
}
