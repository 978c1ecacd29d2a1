"""`chatsmith chat CHECKPOINT`: a streaming REPL through the checkpoint's chat template.

Multi-turn: the history is sent each turn. `/reset` starts over, `/exit` (or EOF) leaves.
"""

from __future__ import annotations

import sys
import threading


def repl(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, TextIteratorStreamer

    from stages.chat_format import stop_token_ids
    from stages.common import load_chat_tokenizer, render_prompt

    try:
        tokenizer, chat_format = load_chat_tokenizer(args.checkpoint, where="chat", plain_text=True)
        model = AutoModelForCausalLM.from_pretrained(args.checkpoint)
    except (OSError, ValueError) as error:
        print(f"chatsmith chat: error: cannot load {args.checkpoint}: {error}", file=sys.stderr)
        return 2
    model.eval()
    if args.seed is not None:
        torch.manual_seed(args.seed)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.checkpoint} — /reset to start over, /exit to leave")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        history.append({"role": "user", "content": line})
        enc = tokenizer(render_prompt(tokenizer, history), return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = {} if args.greedy else {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p,
                                           "top_k": args.top_k or None}
        # stops on the end-of-turn token and on the document EOS (a native format's two are different tokens)
        kwargs = dict(**enc, max_new_tokens=args.max_new_tokens, streamer=streamer, eos_token_id=stop_token_ids(chat_format),
                      pad_token_id=tokenizer.pad_token_id, **sampling)
        thread = threading.Thread(target=lambda: model.generate(**kwargs))
        thread.start()
        print("assistant> ", end="", flush=True)
        reply = []
        for piece in streamer:
            reply.append(piece)
            print(piece, end="", flush=True)
        thread.join()
        print()
        history.append({"role": "assistant", "content": "".join(reply).strip()})
    return 0
