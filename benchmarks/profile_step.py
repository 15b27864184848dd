"""Where the time of a MiniLM (BERT) encode pass and training step goes, for ``speed.py``.

Each component of a BERT encoder layer is timed by itself at the shapes the measured pass
uses, in a ``tf.function`` (forward only for encoding; forward + backward w.r.t. every input
for training), as the median over repeats of the mean time of a run of calls sized to last
about ``target_seconds``. Components (per layer, per tower pass of ``[B, L]`` tokens, hidden
``h``, ``n`` heads, feed-forward width ``i``):

* ``dense_attention``: the Q, K, V and output projections, 4 x ``[B*L, h] @ [h, h] + bias``;
* ``dense_feedforward``: ``[B*L, h] @ [h, i] + bias`` and ``[B*L, i] @ [i, h] + bias``;
* ``attention``: scores ``QK^T / sqrt(h/n)`` + additive mask, softmax, weighted sum of V;
* ``gelu_exact``: the exact erf GELU on ``[B*L, i]`` (what the checkpoint uses);
  ``gelu_tanh`` (the tanh approximation) is timed beside it for comparison only;
* ``layer_norm``: two residual adds + layer norms on ``[B*L, h]``, in float32 (Keras
  computes layer norms in at least float32);
* ``casts`` (bfloat16 only): what the Keras mixed policy adds: the activations cast
  bfloat16 -> float32 -> bfloat16 around both layer norms, and the layer's float32 weights
  cast to bfloat16 on every call (gradients cast back in training).

The sum of the components x layers is compared with the measured pass; each component is
reported as a share of it, and the remainder as ``other`` (framework overhead, embeddings,
pooling, everything not modelled). Outside the layers: the tokenisation done inside the
encode function, the optimizer update (the model's own optimizer on zero gradients) and the
loss (timed by ``speed.py``) in a training step, and the ``tf.data`` time per batch iterated
alone (not inside the measured step, whose batches are materialised beforehand).
"""

import statistics
import time

IN_LAYER = ("dense_attention", "dense_feedforward", "attention", "gelu_exact", "layer_norm",
            "casts")
LABELS = {
    "dense_attention": "dense: Q/K/V/output projections",
    "dense_feedforward": "dense: feed-forward (h->i->h)",
    "attention": "attention scores + mask + softmax + weighted sum",
    "gelu_exact": "GELU (exact erf)",
    "gelu_tanh": "GELU (tanh approximation; alternative, not in the sum)",
    "layer_norm": "layer norm x2 (+ residual adds, float32)",
    "casts": "dtype casts bf16<->f32 (activations, weights)",
    "tokenize": "tokenisation (inside the encode function)",
    "optimizer": "optimizer update (Adam, all weights)",
    "loss": "loss + gradient (SamToNeLoss in-batch)",
    "tf_data": "tf.data per batch, iterated alone (not in the measured step)",
    "other": "other (framework overhead, embeddings, pooling)",
}


def _median(values):
    return statistics.median(values) if values else None


def _sync(tf, out):
    """Waits for ``out`` (a tensor or a nest of tensors) by fetching one element."""
    first = tf.nest.flatten(out)[0]
    tf.reshape(first, [-1])[:1].numpy()


def time_fn(tf, fn, args, repeats, target_seconds):
    """Median seconds per call of ``fn(*args)`` (traced and warmed up first)."""
    _sync(tf, fn(*args))
    started = time.perf_counter()
    _sync(tf, fn(*args))
    once = time.perf_counter() - started
    calls = max(1, min(1000, int(target_seconds / max(once, 1e-6))))
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        _sync(tf, out)
        seconds.append((time.perf_counter() - started) / calls)
    return _median(seconds)


def layer_components(tf, batch, length, arch, precision, training, repeats, target_seconds):
    """Seconds per layer of each component at ``[batch, length]`` tokens (see the module
    docstring); ``training``: forward + backward."""
    h, i, heads = arch["hidden"], arch["intermediate"], arch["heads"]
    d = h // heads
    n = batch * length
    cd = tf.bfloat16 if precision == "bfloat16" else tf.float16 if precision == "float16" \
        else tf.float32
    seed = [0]

    def rnd(shape, dtype=cd):
        seed[0] += 1
        return tf.cast(0.05 * tf.random.stateless_normal(shape, seed=[seed[0], 7]), dtype)

    mask_bias = tf.zeros([batch, 1, 1, length], cd)  # additive mask (all real tokens)
    scale = 1.0 / float(d) ** 0.5

    def dense_attention(x, wq, wk, wv, wo, bq, bk, bv, bo):
        return [tf.matmul(x, w) + b for w, b in ((wq, bq), (wk, bk), (wv, bv), (wo, bo))]

    def dense_feedforward(x, y, w1, b1, w2, b2):
        return [tf.matmul(x, w1) + b1, tf.matmul(y, w2) + b2]

    def attention(q, k, v):
        scores = tf.einsum("bqnd,bknd->bnqk", q, k) * tf.cast(scale, cd) + mask_bias
        probs = tf.nn.softmax(scores, axis=-1)
        return [tf.einsum("bnqk,bknd->bqnd", probs, v)]

    def gelu_exact(u):
        return [tf.nn.gelu(u, approximate=False)]

    def gelu_tanh(u):
        return [tf.nn.gelu(u, approximate=True)]

    def layer_norm(x, r, x2, r2, g, b, g2, b2):
        outs = []
        for a, res, gamma, beta in ((x, r, g, b), (x2, r2, g2, b2)):
            z = a + res
            mean, variance = tf.nn.moments(z, axes=[-1], keepdims=True)
            inv = tf.math.rsqrt(variance + 1e-12) * gamma
            outs.append(z * inv + (beta - mean * inv))
        return outs

    def casts(a1, a2, y1, y2, weights):
        return [tf.cast(a1, tf.float32), tf.cast(a2, tf.float32), tf.cast(y1, cd),
                tf.cast(y2, cd), tf.cast(weights, cd)]

    f32 = tf.float32
    weights_per_layer = 4 * h * h + 4 * h + 2 * h * i + i + h
    specs = {
        "dense_attention": (dense_attention, [rnd([n, h])] + [rnd([h, h]) for _ in range(4)]
                            + [rnd([h]) for _ in range(4)]),
        "dense_feedforward": (dense_feedforward, [rnd([n, h]), rnd([n, i]), rnd([h, i]),
                                                  rnd([i]), rnd([i, h]), rnd([h])]),
        "attention": (attention, [rnd([batch, length, heads, d]) for _ in range(3)]),
        "gelu_exact": (gelu_exact, [rnd([n, i])]),
        "gelu_tanh": (gelu_tanh, [rnd([n, i])]),
        "layer_norm": (layer_norm, [rnd([n, h], f32) for _ in range(4)]
                       + [rnd([h], f32) for _ in range(4)]),
    }
    if cd != tf.float32:
        specs["casts"] = (casts, [rnd([n, h]), rnd([n, h]), rnd([n, h], f32), rnd([n, h], f32),
                                  rnd([weights_per_layer], f32)])
    out = {}
    for name, (fn, inputs) in specs.items():
        forward = tf.function(fn)
        if training:
            cotangents = [tf.ones_like(o) for o in forward(*inputs)]

            def step(*tensors, fn=fn, cotangents=cotangents):
                with tf.GradientTape() as tape:
                    tape.watch(tensors)
                    outs = fn(*tensors)
                return tape.gradient(outs, list(tensors), output_gradients=cotangents)

            timed = tf.function(step)
        else:
            timed = forward
        out[name] = time_fn(tf, timed, inputs, repeats, target_seconds)
    if "casts" not in out:
        out["casts"] = 0.0
    return out


def pass_components(tf, shapes, arch, precision, training, repeats, target_seconds):
    """Sums :func:`layer_components` over ``shapes`` (``[(batch, length), ...]``, one per
    tower pass, repeats allowed) and the layers. Returns ``{name: seconds}`` and the per-shape
    details."""
    per_shape = {}
    totals = {}
    for shape in shapes:
        if shape not in per_shape:
            per_shape[shape] = layer_components(tf, shape[0], shape[1], arch, precision,
                                                training, repeats, target_seconds)
        for name, seconds in per_shape[shape].items():
            totals[name] = totals.get(name, 0.0) + seconds * arch["layers"]
    details = [{"batch": b, "length": length, "per_layer_seconds": per_shape[(b, length)],
                "count": shapes.count((b, length))} for b, length in sorted(per_shape)]
    return totals, details


def breakdown(components, measured_seconds):
    """Shares of a measured pass.

    Args:
        components: ``{name: seconds}`` of the parts inside the measured pass.
        measured_seconds: the measured pass (or step) time.

    Returns:
        dict with ``measured_seconds``, ``components`` (``{name: {"seconds", "share"}}``,
        plus ``other`` = measured - sum, possibly negative when the isolated components take
        longer than the whole), ``sum_seconds`` and ``sum_share``.
    """
    total = sum(components.values())
    rows = {}
    for name, seconds in components.items():
        rows[name] = {"seconds": seconds,
                      "share": seconds / measured_seconds if measured_seconds else None}
    other = measured_seconds - total
    rows["other"] = {"seconds": other,
                     "share": other / measured_seconds if measured_seconds else None}
    return {"measured_seconds": measured_seconds, "components": rows, "sum_seconds": total,
            "sum_share": total / measured_seconds if measured_seconds else None}


def tokenize_seconds(tf, tokenizer, batches, repeats, trim=True):
    """Median seconds to tokenise ``batches`` (lists of strings) with ``tokenizer`` in a
    ``tf.function`` (each batch trimmed to its longest text, as the encode path does)."""
    from samtone_tf.data import trim_to_longest

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(texts):
        features = tokenizer(texts)
        return trim_to_longest(features) if trim else features

    tensors = [tf.constant(b) for b in batches]
    for t in tensors[:1]:
        _sync(tf, tokenize(t))
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        for t in tensors:
            out = tokenize(t)
        _sync(tf, out)
        seconds.append(time.perf_counter() - started)
    return _median(seconds)


def optimizer_seconds(tf, model, repeats, target_seconds):
    """Median seconds of one ``model.optimizer.apply_gradients`` on zero gradients for all
    trainable weights (the update a training step does; changes the model's weights)."""
    variables = list(model.trainable_variables)
    grads = [tf.zeros(v.shape, v.dtype) for v in variables]

    @tf.function
    def update():
        model.optimizer.apply_gradients(zip(grads, variables))
        return tf.convert_to_tensor(variables[0])

    return time_fn(tf, update, [], repeats, target_seconds), sum(int(v.shape.num_elements())
                                                               for v in variables)


def dataset_seconds_per_batch(dataset, batches):
    """Seconds per batch to pull ``batches`` batches from a fresh iterator of ``dataset``
    (after its first batch), i.e. tokenising and batching alone."""
    iterator = iter(dataset)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - started) / batches


def xla_encode(tf, model, tokenizer, texts, batch_size, repeats, helps_speedup=1.05):
    """One encode pass over ``texts`` (fixed tokenizer length, one shape) with the model call
    in a ``tf.function(jit_compile=True)`` vs the same without XLA, interleaved per repeat.
    Tokenisation runs outside the compiled function (string ops do not compile)."""
    tokenize = tf.function(lambda t: tokenizer(t),
                           input_signature=[tf.TensorSpec([None], tf.string)])
    batches = [tf.constant(texts[s:s + batch_size]) for s in range(0, len(texts), batch_size)]
    fns = {"no_xla": tf.function(lambda f: model.encode_documents(f), jit_compile=False),
           "xla": tf.function(lambda f: model.encode_documents(f), jit_compile=True)}

    def run(fn):
        out = None
        for b in batches:
            out = fn(tokenize(b)).numpy()
        return out

    result = {}
    for name, fn in fns.items():
        started = time.perf_counter()
        try:
            fn(tokenize(batches[0])).numpy()
        except Exception as error:  # noqa: BLE001 - e.g. an op XLA cannot compile
            result[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            continue
        result[name] = {"first_call_seconds": time.perf_counter() - started, "pass_seconds": []}
    live = [n for n in fns if "error" not in result[n]]
    for r in range(repeats if live else 0):
        for name in live[r % len(live):] + live[:r % len(live)]:
            started = time.perf_counter()
            run(fns[name])
            result[name]["pass_seconds"].append(time.perf_counter() - started)
    for name in live:
        med = _median(result[name]["pass_seconds"])
        result[name]["median_pass_seconds"] = med
        result[name]["docs_per_second"] = len(texts) / med if med else None
    if "median_pass_seconds" in result.get("xla", {}) and \
            "median_pass_seconds" in result.get("no_xla", {}):
        speedup = result["no_xla"]["median_pass_seconds"] / result["xla"]["median_pass_seconds"]
        result["speedup"] = speedup
        result["helps"] = speedup >= helps_speedup
    else:
        result["speedup"] = None
        result["helps"] = None
    result["padding"] = "every document padded to the tokenizer length (one shape: one compile)"
    return result
