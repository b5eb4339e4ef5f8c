#!/usr/bin/env python3
"""GPTQ in PyTorch, written from the paper's algorithm: the baseline gptq-rs is timed against.

    torch_gptq.py pipeline --model DIR --calib FILE.json [--bits 3 --group-size 128 --asym]
                           [--text FILE --windows 40] [--threads 2]
    torch_gptq.py layer --rows 4096 --cols 4096 --tokens 16384 [--bits 4 --group-size 128]
                        [--device cuda] [--repeats 3]
    torch_gptq.py decoder --hidden 4096 --intermediate 11008 --tokens 16384 [--device cuda]

`pipeline` quantizes a Llama-family Hugging Face checkpoint the way the widely used reference
implementation organises the work: capture the inputs of decoder layer 0; for each layer and each
true-sequential group (q/k/v, o, gate/up, down), run the whole layer over every calibration window
with hooks that accumulate H = 2/N Σ XᵀX, solve GPTQ for the group's linears and replace their
weights by the dequantized result; then run the layer once more to feed the next one. With
--no-true-sequential all seven linears form one group, as in the reference's default: one hooked
pass over the layer's full-precision weights, then the pass that feeds the next layer. It prints the
time split (layer forward passes, Hessian accumulation inside them, solving) and, with --text, the
perplexity of the quantized model on the first --windows windows (exp of the mean token NLL).

`layer` times one layer's Hessian accumulation and solve on random data, on CPU or a GPU, with the
same split as gptq-rs's benchmarks (upload, Hessian, inverse factor, column loop, block updates).
`decoder` does the same for a whole Llama decoder layer's linears (Llama-7B's shapes by default):
four Hessians, seven solves. Both print one JSON line (median of --repeats after a warm-up run).

Needs torch and transformers (scripts/hf_check.sh sets up a virtual environment with both).
"""

import argparse
import json
import math
import time

import torch


# ---------------------------------------------------------------------------------------------
# The grid: min-max including zero, per row (or per group of columns), symmetric or asymmetric.


def fit_grid(w, bits, sym):
    """Scale and zero point per row of `w` [rows, cols]."""
    maxq = 2**bits - 1
    zero_t = torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
    lo = torch.minimum(w.min(dim=1).values, zero_t)
    hi = torch.maximum(w.max(dim=1).values, zero_t)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    flat = (lo == 0) & (hi == 0)
    lo = torch.where(flat, torch.full_like(lo, -1.0), lo)
    hi = torch.where(flat, torch.full_like(hi, 1.0), hi)
    scale = (hi - lo) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-lo / scale)
    return scale, zero


def quantize_column(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


# ---------------------------------------------------------------------------------------------
# The solver.


class Timer:
    def __init__(self, device):
        self.device = device
        self.totals = {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, name, seconds):
        self.totals[name] = self.totals.get(name, 0.0) + seconds


def inverse_factor(h, damp_percent):
    """Upper Cholesky factor of the damped inverse of `h` (modified in place)."""
    diag = torch.arange(h.shape[0], device=h.device)
    h[diag, diag] += damp_percent * torch.mean(torch.diag(h))
    lower = torch.linalg.cholesky(h)
    h_inv = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(h_inv, upper=True)


def gptq_solve(w, h, bits=4, group_size=128, sym=False, act_order=False, damp_percent=0.01,
               block_size=128, timer=None):
    """Quantize `w` [rows, cols] against the Hessian `h` [cols, cols]; returns (dequantized, loss).

    `w` and `h` are overwritten. Column by column, blocks of `block_size` with lazy updates of the
    columns right of the block; dynamic groups fitted when the first column of a group is reached.
    """
    maxq = 2**bits - 1
    sync = timer.sync if timer else (lambda: None)
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w = w[:, perm]
        h = h[perm][:, perm]

    sync()
    t = time.perf_counter()
    u = inverse_factor(h, damp_percent)
    sync()
    if timer:
        timer.add("inverse factor", time.perf_counter() - t)

    q = torch.zeros_like(w)
    losses = torch.zeros(rows, device=w.device, dtype=w.dtype)
    scale, zero = fit_grid(w, bits, sym)
    loop_s = update_s = 0.0
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        t = time.perf_counter()
        w1 = w[:, b0:b1].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = w1[:, i]
            if group_size > 0 and (b0 + i) % group_size == 0:
                scale, zero = fit_grid(w[:, b0 + i:b0 + i + group_size], bits, sym)
            qcol = quantize_column(col, scale, zero, maxq)
            q[:, b0 + i] = qcol
            d = u1[i, i]
            losses += (col - qcol) ** 2 / d**2
            e = (col - qcol) / d
            w1[:, i:] -= e.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        sync()
        t1 = time.perf_counter()
        loop_s += t1 - t
        w[:, b1:] -= err1 @ u[b0:b1, b1:]
        sync()
        update_s += time.perf_counter() - t1
    if timer:
        timer.add("column loop", loop_s)
        timer.add("block updates", update_s)
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    return q, float(losses.sum()) / 2


# ---------------------------------------------------------------------------------------------
# `layer`: one random layer on any device.


def run_layer(args):
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    # Correlated activations, like a real layer's inputs: random mixing of independent features.
    if args.data:
        x_host = read_f32(args.data, "x0", args.tokens, args.cols)
        w_host = read_f32(args.data, "w0_0", args.rows, args.cols)
    else:
        x_host = torch.randn(args.tokens, args.cols, generator=gen)
        mix = torch.randn(args.cols, args.cols, generator=gen) / math.sqrt(args.cols)
        x_host = (x_host @ (torch.eye(args.cols) + 0.5 * mix)).contiguous()
        w_host = (torch.randn(args.rows, args.cols, generator=gen) * 0.02).contiguous()
    if device.type == "cuda":
        x_host, w_host = x_host.pin_memory(), w_host.pin_memory()

    results = []
    for rep in range(args.repeats + 1):
        timer = Timer(device)
        timer.sync()
        t_all = time.perf_counter()
        x = x_host.to(device, non_blocking=True)
        w = w_host.to(device, non_blocking=True, copy=True)  # the solve overwrites it
        timer.sync()
        t = time.perf_counter()
        timer.add("upload", t - t_all)
        h = (2.0 / args.tokens) * (x.T @ x)
        timer.sync()
        timer.add("hessian", time.perf_counter() - t)
        t_copies = time.perf_counter()
        w_before, h_before = w.clone(), h.clone()  # both are overwritten by the solve
        timer.sync()
        copies = time.perf_counter() - t_copies
        q, loss = gptq_solve(w, h, bits=args.bits, group_size=args.group_size, sym=args.sym,
                             act_order=args.act_order, timer=timer)
        t = time.perf_counter()
        q_host = q.to("cpu")
        timer.add("download", time.perf_counter() - t)
        total = time.perf_counter() - t_all - copies  # without the copies kept for the loss
        quadratic = quadratic_loss(w_before, q, h_before)
        del x, w, h, q, q_host, w_before, h_before
        if rep > 0:  # the first run warms up kernels and allocators
            results.append((total, timer.totals, loss, quadratic))

    print_median(results, f"{args.rows}x{args.cols} tokens {args.tokens} w{args.bits} "
                 f"g{args.group_size}", device, args.repeats)


def print_median(results, name, device, repeats):
    """Prints, as one JSON line, the run of median time among (total, split, loss, quadratic)."""
    results.sort(key=lambda r: r[0])
    total, split, loss, quadratic = results[len(results) // 2]
    print(json.dumps({"layer": name, "device": str(device), "median_seconds": total,
                      "split": split, "loss": loss, "quadratic_loss": quadratic,
                      "repeats": repeats}))


def read_f32(data, name, rows, cols):
    """A [rows, cols] matrix of little-endian f32 written by gptq-rs's gpu_bench (`--data`)."""
    import numpy as np
    values = np.fromfile(f"{data}/{name}.f32", dtype="<f4")
    if values.size != rows * cols:
        raise SystemExit(f"{data}/{name}.f32 holds {values.size} values, not {rows} x {cols}")
    return torch.from_numpy(values.reshape(rows, cols).copy())


def quadratic_loss(w, q, h):
    """tr((W - Q) H (W - Q)ᵀ) with the undamped Hessian: the loss gptq-rs reports."""
    d = (w - q).double()
    return float(((d @ h.double()) * d).sum())


def low_rank_inputs(tokens, cols, gen):
    """Correlated activations made cheaply at any width: 32 shared latent features mixed into
    every column, plus noise, with column scales that differ (as gptq-rs's benchmarks make them)."""
    latent = torch.randn(tokens, 32, generator=gen)
    mixing = torch.randn(32, cols, generator=gen)
    noise = 0.3 * torch.randn(tokens, cols, generator=gen)
    scale = 0.2 + (torch.arange(cols) % 17).float() / 8.0
    return ((latent @ mixing + noise) * scale).contiguous()


def run_decoder(args):
    """A Llama decoder layer's seven linears: four Hessians (q/k/v share one input, gate/up
    another), each from `tokens` rows, and seven solves."""
    device = torch.device(args.device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    h, i = args.hidden, args.intermediate
    groups = [(["q_proj", "k_proj", "v_proj"], h, h), (["o_proj"], h, h),
              (["gate_proj", "up_proj"], i, h), (["down_proj"], h, i)]
    if args.data:
        inputs = [read_f32(args.data, f"x{g}", args.tokens, cols)
                  for g, (_, _, cols) in enumerate(groups)]
        weights = [[read_f32(args.data, f"w{g}_{j}", rows, cols) for j in range(len(names))]
                   for g, (names, rows, cols) in enumerate(groups)]
    else:
        inputs = [low_rank_inputs(args.tokens, cols, gen) for _, _, cols in groups]
        weights = [[(torch.randn(rows, cols, generator=gen) * 0.02).contiguous() for _ in names]
                   for names, rows, cols in groups]
    if device.type == "cuda":
        inputs = [x.pin_memory() for x in inputs]
        weights = [[w.pin_memory() for w in ws] for ws in weights]

    results = []
    for rep in range(args.repeats + 1):
        timer = Timer(device)
        timer.sync()
        t_all = time.perf_counter()
        loss_total = quadratic_total = untimed = 0.0
        for (names, _, _), x_host, ws in zip(groups, inputs, weights):
            t = time.perf_counter()
            x = x_host.to(device, non_blocking=True)
            timer.sync()
            t1 = time.perf_counter()
            timer.add("upload", t1 - t)
            hessian = (2.0 / args.tokens) * (x.T @ x)
            timer.sync()
            timer.add("hessian", time.perf_counter() - t1)
            del x
            for w_host in ws:
                t = time.perf_counter()
                w = w_host.to(device, non_blocking=True, copy=True)  # the solve overwrites it
                timer.sync()
                timer.add("upload", time.perf_counter() - t)
                q, loss = gptq_solve(w, hessian.clone(), bits=args.bits, group_size=args.group_size,
                                     sym=args.sym, act_order=args.act_order, timer=timer)
                t = time.perf_counter()
                q.to("cpu")
                timer.add("download", time.perf_counter() - t)
                loss_total += loss
                # Outside the timed part: the loss gptq-rs reports, from the weight as uploaded.
                t = time.perf_counter()
                quadratic_total += quadratic_loss(w_host.to(device), q, hessian)
                timer.sync()
                untimed += time.perf_counter() - t
        total = time.perf_counter() - t_all - untimed
        if rep > 0:  # the first run warms up kernels and allocators
            results.append((total, timer.totals, loss_total, quadratic_total))

    print_median(results, f"decoder hidden {h} intermediate {i} tokens {args.tokens} "
                 f"w{args.bits} g{args.group_size}", device, args.repeats)


# ---------------------------------------------------------------------------------------------
# `pipeline`: a Hugging Face model, layer by layer.


SEQUENTIAL_GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.o_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
    ["mlp.down_proj"],
]


class StopForward(Exception):
    pass


def layer0_inputs(model, windows):
    """Hidden states entering decoder layer 0 for each window, and the keyword arguments it got."""
    captured = {"inputs": [], "kwargs": None}

    def grab(_module, args, kwargs):
        captured["inputs"].append(args[0] if args else kwargs["hidden_states"])
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise StopForward

    handle = model.model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    for ids in windows:
        try:
            model(input_ids=ids.unsqueeze(0), use_cache=False)
        except StopForward:
            pass
    handle.remove()
    return captured["inputs"], captured["kwargs"]


def run_pipeline(args):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model.eval()
    with open(args.calib) as f:
        windows = [torch.tensor(w, dtype=torch.long) for w in json.load(f)["windows"]]
    windows = windows[: args.nsamples]
    times = {"load": time.perf_counter() - t_start, "forward": 0.0, "hessian": 0.0, "solve": 0.0}

    with torch.inference_mode():
        inputs, kwargs = layer0_inputs(model, windows)
        for index, layer in enumerate(model.model.layers):
            t_layer = time.perf_counter()
            groups = SEQUENTIAL_GROUPS if args.true_sequential else [sum(SEQUENTIAL_GROUPS, [])]
            for names in groups:
                linears = {n: layer.get_submodule(n) for n in names}
                hessians = {n: torch.zeros(m.in_features, m.in_features) for n, m in linears.items()}
                hook_s = [0.0]

                def make_hook(name):
                    def hook(_module, inp, _out):
                        t = time.perf_counter()
                        x = inp[0].reshape(-1, inp[0].shape[-1])
                        hessians[name].addmm_(x.T, x)
                        hook_s[0] += time.perf_counter() - t
                    return hook

                handles = [m.register_forward_hook(make_hook(n)) for n, m in linears.items()]
                t = time.perf_counter()
                for x in inputs:
                    layer(x, **kwargs)
                for handle in handles:
                    handle.remove()
                times["forward"] += time.perf_counter() - t - hook_s[0]
                times["hessian"] += hook_s[0]

                t = time.perf_counter()
                for name, module in linears.items():
                    h = hessians[name] * (2.0 / len(inputs))
                    q, _loss = gptq_solve(module.weight.data.clone(), h, bits=args.bits,
                                          group_size=args.group_size, sym=args.sym,
                                          act_order=args.act_order, damp_percent=args.damp)
                    module.weight.data.copy_(q)
                times["solve"] += time.perf_counter() - t
            t = time.perf_counter()
            inputs = [layer(x, **kwargs) for x in inputs]
            inputs = [x[0] if isinstance(x, tuple) else x for x in inputs]
            times["forward"] += time.perf_counter() - t
            print(f"layer {index}: {time.perf_counter() - t_layer:.1f} s", flush=True)
    times["total"] = time.perf_counter() - t_start
    print(json.dumps({"quantize_seconds": times}), flush=True)

    if args.text:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model)
        with open(args.text, encoding="utf-8") as f:
            ids = tokenizer(f.read(), add_special_tokens=False)["input_ids"]
        ids = torch.tensor(ids, dtype=torch.long)
        n = min(args.windows, ids.numel() // args.seqlen)
        nll, count = 0.0, 0
        with torch.inference_mode():
            for i in range(n):
                window = ids[i * args.seqlen:(i + 1) * args.seqlen].unsqueeze(0)
                logits = model(input_ids=window, use_cache=False).logits[0].float()
                nll += float(torch.nn.functional.cross_entropy(logits[:-1], window[0, 1:],
                                                                reduction="sum"))
                count += args.seqlen - 1
        print(f"perplexity {math.exp(nll / count):.4f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("pipeline", "layer", "decoder"):
        p = sub.add_parser(name)
        p.add_argument("--bits", type=int, default=4)
        p.add_argument("--group-size", type=int, default=128)
        grid = p.add_mutually_exclusive_group()
        grid.add_argument("--sym", dest="sym", action="store_true")
        grid.add_argument("--asym", dest="sym", action="store_false")
        p.set_defaults(sym=False)
        p.add_argument("--act-order", action="store_true")
        p.add_argument("--damp", type=float, default=0.01)
    pipe = sub.choices["pipeline"]
    pipe.add_argument("--model", required=True)
    pipe.add_argument("--calib", required=True, help="JSON file with `windows`: lists of token ids")
    pipe.add_argument("--nsamples", type=int, default=128)
    pipe.add_argument("--text", help="text file for perplexity after quantizing")
    pipe.add_argument("--windows", type=int, default=40)
    pipe.add_argument("--seqlen", type=int, default=512)
    pipe.add_argument("--threads", type=int, default=2)
    pipe.add_argument("--no-true-sequential", dest="true_sequential", action="store_false",
                      help="one group of all linears per layer (the reference's default)")
    lay = sub.choices["layer"]
    lay.add_argument("--rows", type=int, default=4096)
    lay.add_argument("--cols", type=int, default=4096)
    lay.add_argument("--tokens", type=int, default=16384)
    lay.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    lay.add_argument("--repeats", type=int, default=3)
    lay.add_argument("--seed", type=int, default=0)
    lay.add_argument("--data", help="read x0.f32 and w0_0.f32 from this folder instead")
    dec = sub.choices["decoder"]
    dec.add_argument("--hidden", type=int, default=4096)
    dec.add_argument("--intermediate", type=int, default=11008)
    dec.add_argument("--tokens", type=int, default=16384)
    dec.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    dec.add_argument("--repeats", type=int, default=3)
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--data", help="read xG.f32 and wG_J.f32 (group G, linear J) from this folder")
    args = ap.parse_args()
    if args.command == "pipeline":
        run_pipeline(args)
    elif args.command == "decoder":
        run_decoder(args)
    else:
        run_layer(args)


if __name__ == "__main__":
    main()
