"""TensorFlow: a functional model's forward pass over one volume in less memory, with the
same numbers bit for bit (:func:`lean_forward`).

At full resolution the decoder concatenates two maps, or upsamples one, into a map of
twice the channels, only to convolve it at once: the default network (base 16, depth 5)
over a whole BraTS case held 1.04 GiB of tensors there (skip, upsampled and concatenated
maps together). Each such pair of layers (:func:`_tileable`) runs here in :data:`SLABS`
slabs along the first spatial axis instead, the convolution reading each slab with the
one row of context on either side its 3x3(x3) kernel needs, and writing its rows into
its output as they are made (``Empty``, then ``InplaceUpdate``: in place where it may,
into the skip map where nothing else reads it, and into a copy where it may not, which
never changes the result). Every output voxel comes from the same operations on the same
inputs as in the plain pass: the tests compare the probabilities bit for bit; the
convolutions compute 2 rows more per slab boundary.

Measured instead and dropped: the instance normalisations, slab by slab after their
statistics over the whole map, gave the same numbers but a higher peak and a 40% slower
pass (the plain graph's normalisation is already lean under oneDNN).
"""

from __future__ import annotations

from collections.abc import Callable

import keras

SLABS = 4  # a slab-wise layer runs in this many slabs along the first spatial axis
_PRODUCERS = (keras.layers.Concatenate, keras.layers.UpSampling3D, keras.layers.UpSampling2D)


def lean_forward(model) -> Callable | None:
    """The forward pass of a functional ``model`` over a batch of one, in less memory and
    with the same numbers (see the module), or None where it has nothing to save.

    Args:
        model: keras.Model, functional (TensorFlow backend).

    Returns:
        A function of a `(1, D, H, W, C)` tensor for ``tf.function``, or None.
    """
    if not hasattr(model, "_run_through_graph") or not hasattr(model, "_nodes_by_depth"):
        return None
    pairs = _tileable(model)
    if not pairs:
        return None

    def operation_fn(op):
        def call(*args, **kwargs):
            if "training" in getattr(op, "_call_context_args", ()):
                kwargs["training"] = False
            if id(op) in pairs:
                return _Deferred(op, args, kwargs, pairs[id(op)])
            if args and isinstance(args[0], _Deferred):
                return _tiled(op, args[0], kwargs)
            return op(*args, **kwargs)

        return call

    def forward(x):
        if x.shape[0] != 1:  # slabs of a batch of one
            return model(x, training=False)
        return model._run_through_graph([x], operation_fn=operation_fn)

    return forward


def _ordered_nodes(model) -> list:
    """The model's nodes, each after the nodes it reads."""
    return [n for depth in sorted(model._nodes_by_depth, reverse=True)
            for n in model._nodes_by_depth[depth]]


def _readers(nodes) -> dict[int, list]:
    """Tensor id -> the operations that read it."""
    readers: dict[int, list] = {}
    for node in nodes:
        for tensor in node.input_tensors:
            readers.setdefault(id(tensor), []).append(node.operation)
    return readers


class _Deferred:
    """A tileable layer's call, run slab by slab by the convolution that reads it."""

    def __init__(self, op, args, kwargs, dest):
        self.op, self.args, self.kwargs, self.dest = op, args, kwargs, dest


def _tileable(model) -> dict[int, int | None]:
    """The full-resolution concatenations and upsamplings whose one reader is a 3x3(x3)
    stride-1 'same' convolution: layer id -> the concatenated input the convolution may
    write its output into (one of its shape read by the concatenation only), or None."""
    nodes = _ordered_nodes(model)
    readers = _readers(nodes)
    scale = {id(t): 1 for t in model.inputs}  # voxel size, in input voxels (2: coarser)
    for node in nodes:
        op, factor = node.operation, 1
        if isinstance(op, (keras.layers.Conv3D, keras.layers.Conv2D)):
            factor = op.strides[0]
        elif isinstance(op, _PRODUCERS[1:]):
            factor = 1 / op.size[0]
        size = max((scale.get(id(t), 0) for t in node.input_tensors), default=1)
        scale.update({id(out): size * factor for out in node.outputs})
    pairs, inputs = {}, {id(t) for t in model.inputs}  # never written into: the caller's
    outputs = {id(t) for t in model.outputs}
    for node in nodes:
        op = node.operation
        out = node.outputs[0] if len(node.outputs) == 1 else None
        users = readers.get(id(out), [])
        if (not isinstance(op, _PRODUCERS) or scale.get(id(out)) != 1 or len(users) != 1
                or not _slab_conv(users[0]) or id(out) in outputs):
            continue
        if isinstance(op, keras.layers.Concatenate) and op.axis in (-1, len(out.shape) - 1):
            pairs[id(op)] = next((i for i, t in enumerate(node.input_tensors)
                                  if len(readers[id(t)]) == 1 and id(t) not in inputs
                                  and t.shape[-1] == users[0].filters), None)
        elif not isinstance(op, keras.layers.Concatenate) and getattr(
                op, "interpolation", "nearest") == "nearest":
            pairs[id(op)] = None
    return pairs


def _tiled(conv, deferred: _Deferred, kwargs):
    """``conv(deferred)`` slab by slab: see :func:`lean_forward`."""
    import tensorflow as tf

    concat = isinstance(deferred.op, keras.layers.Concatenate)
    inputs = list(deferred.args[0]) if concat else [deferred.args[0]]
    step = 1 if concat else deferred.op.size[0]  # output rows per input row
    views = [_rows(t) for t in inputs]  # rows are axis 0: their slices share the buffer
    rows_in = tf.shape(views[0])[0]
    into = deferred.dest
    if into is not None and inputs[into].dtype != conv.compute_dtype:
        into = None
    out = views[into] if into is not None else None
    pending, after = None, []
    per_slab = (rows_in + SLABS - 1) // SLABS  # empty slabs, if any, come last
    for i in range(SLABS):
        first = tf.minimum(i * per_slab, rows_in) * step
        last = tf.minimum((i + 1) * per_slab, rows_in) * step
        lo, hi = tf.maximum(first - 1, 0), tf.minimum(last + 1, rows_in * step)
        start = lo // step * step  # the first row the layer's slab makes
        if into is not None:
            views[into] = out  # its rows this slab reads are not overwritten yet
        with tf.control_dependencies(after):  # one slab after the other
            parts = [t[lo // step:(hi + step - 1) // step][None] for t in views]
            x = deferred.op(parts if concat else parts[0], **deferred.kwargs)
            x = _rows(x)[lo - start:hi - start][None]  # the rows the convolution reads
        if pending is not None:  # written once this slab has read its first row
            with tf.control_dependencies([x]):
                out = tf.raw_ops.InplaceUpdate(x=out, i=pending[0], v=pending[1])
        y = _rows(conv(x, **kwargs))[first - lo:last - lo]
        if out is None:
            out = tf.raw_ops.Empty(shape=tf.concat([[rows_in * step], tf.shape(y)[1:]], 0),
                                   dtype=y.dtype, init=False)
        pending, after = (tf.range(first, last), y), [y]
        if into is None:  # a new map: nothing to read back, written at once
            out = tf.raw_ops.InplaceUpdate(x=out, i=pending[0], v=pending[1])
            pending, after = None, [out]
    if pending is not None:
        out = tf.raw_ops.InplaceUpdate(x=out, i=pending[0], v=pending[1])
    return out[None]


def _rows(tensor):
    """A batch of one without its batch axis (the same buffer)."""
    import tensorflow as tf

    return tf.reshape(tensor, tf.shape(tensor)[1:])


def _slab_conv(op) -> bool:
    """Whether ``op`` is a 3x3(x3) stride-1 'same' convolution: one row of context a side."""
    return (isinstance(op, (keras.layers.Conv3D, keras.layers.Conv2D))
            and all(k == 3 for k in op.kernel_size) and all(s == 1 for s in op.strides)
            and all(d == 1 for d in op.dilation_rate) and op.padding == "same"
            and op.groups == 1)
