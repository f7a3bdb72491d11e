"""Run N streams through SSERelay.feed (per-event feeding and whole-stream feeding); for callgrind."""
import sys, msgspec
from sluice.upstream.relay import SSERelay
def ev(d): return b"data: " + msgspec.json.encode(d) + b"\n\n"
base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
events = [ev({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
events += [ev({**base, "choices": [{"index": 0, "delta": {"content": f" word{i}"}}]}) for i in range(20)]
events += [ev({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
           ev({**base, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}}),
           b"data: [DONE]\n\n"]
whole = b"".join(events)
n = int(sys.argv[1])
for _ in range(n):
    r = SSERelay(strip_usage=True); r.feed(whole)
    r = SSERelay(strip_usage=True)
    for e in events: r.feed(e)
