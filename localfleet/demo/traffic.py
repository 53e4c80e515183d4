"""The demo's request bodies: prompts long enough for live quality to score, and unique per request."""
from __future__ import annotations

import json

PASSAGES = [
    # Prompts of about 70 tokens: live quality scores each prompt's next tokens (docs/metrics.md), so longer prompts
    # bring the 2,000 scored tokens the default qualityDrop gate needs within a few dozen canary requests.
    "A hash table is a data structure that implements an associative array, mapping keys to values. It uses a hash "
    "function to compute an index, also called a hash code, into an array of buckets or slots, from which the "
    "desired value can be found. During lookup, the key is hashed and the resulting hash tells where",
    "A binary search tree is a rooted binary tree whose internal nodes each store a key greater than all the keys "
    "in the node's left subtree and less than those in its right subtree. Lookup, insertion and deletion use the "
    "principle of binary search: each comparison allows the operation to skip about half of the",
    "Garbage collection is a form of automatic memory management. The collector attempts to reclaim memory that "
    "was allocated by the program but is no longer referenced. Reference counting frees an object as soon as its "
    "count of references drops to zero, while a tracing collector starts from the roots and finds",
    "The import statement combines two operations; it searches for the named module, then it binds the results of "
    "that search to a name in the local scope. The search operation of the import statement is defined as a call "
    "to the import function, with the appropriate arguments, and its return value is used to",
]
def infer_body(prompt: str, max_tokens: int = 4) -> bytes:
    return json.dumps({"inputs": [
        {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": [prompt]},
        {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [max_tokens]}]}).encode()



def traffic_body(index: int) -> bytes:
    """Request `index` of the steady traffic: a passage behind a request number, so no two prompts share a prefix
    block (each request writes its whole prompt's KV, and the fallback gate sees every token)."""
    return infer_body(f"Request {index}. {PASSAGES[index % len(PASSAGES)]}")
