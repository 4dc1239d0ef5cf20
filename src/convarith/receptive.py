"""Receptive fields through a stack of resolved convolutions and poolings.

For every tensor in a network, each spatial axis is described relative to the
network's input by three numbers:

``size`` (``r``)
    how many input cells one cell of the tensor sees;
``jump`` (effective stride)
    how far apart, in input cells, the fields of two neighbouring cells are;
``start``
    the input coordinate of the first cell of cell 0's field (negative: it
    reaches into the padding).

Cell ``i``'s field is ``[start + i jump, start + i jump + size - 1]``. Going
through a layer with effective kernel ``K_eff``, stride ``S`` and padding
``lo`` before the input::

    jump_out  = jump_in S
    size_out  = size_in + (K_eff - 1) jump_in
    start_out = start_in - lo jump_in

which, read from the output back to the input (one layer, ``jump_in = 1``),
is the textbook ``r_in = r_out S + (K_eff - S)``. A transposed convolution
walks the other way: ``jump_out = jump_in / S`` (fractions are kept exact), and
its field is an upper bound because inserted zeros read nothing.

:func:`exact_field` gives the exact set of input cells of one output cell by
walking the footprint geometry back layer by layer (padding modes included),
which is what the brute-force tests and the pictures use.

Examples
--------
>>> from convarith import ConvSpec
>>> layers = [ConvSpec(3).resolve(32), ConvSpec(3, strides=2).resolve(30)]
>>> fields = stack_fields(layers)
>>> fields[-1].size, fields[-1].jump, fields[-1].start
((5, 5), (2, 2), (0, 0))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from .limits import check_layers
from .spec import ResolvedConv

__all__ = ["ReceptiveField", "stack_fields", "exact_field", "Number", "tidy_number"]

Number = int | Fraction


def tidy_number(value: Number) -> Number:
    """A Fraction with denominator 1 becomes an int (for printing and JSON).

    >>> tidy_number(Fraction(6, 2)), tidy_number(Fraction(1, 2)), tidy_number(4)
    (3, Fraction(1, 2), 4)
    """
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    return value


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of one tensor's cells on the network input, per axis.

    Examples
    --------
    >>> from convarith import ConvSpec
    >>> f = ReceptiveField.identity(2).through(ConvSpec(3, strides=2, padding="same").resolve(28))
    >>> f.size, f.jump, f.start
    ((3, 3), (2, 2), (0, 0))
    >>> f.span((1, 0))
    ((2, 4), (0, 2))
    """

    size: tuple[Number, ...]
    jump: tuple[Number, ...]
    start: tuple[Number, ...]

    @classmethod
    def identity(cls, rank: int) -> ReceptiveField:
        """The network input itself: each cell sees itself."""
        return cls((1,) * rank, (1,) * rank, (0,) * rank)

    @property
    def rank(self) -> int:
        return len(self.size)

    @property
    def center(self) -> tuple[Number, ...]:
        """Input coordinate of the centre of cell 0's field (a half means between cells)."""
        return tuple(
            tidy_number(Fraction(s) + Fraction(r - 1, 2)) for s, r in zip(self.start, self.size)
        )

    def span(self, index: Sequence[int]) -> tuple[tuple[Number, Number], ...]:
        """Per axis ``(first, last)`` input coordinates of cell ``index``'s field."""
        if len(index) != self.rank:
            raise ValueError(f"index {tuple(index)} must have {self.rank} coordinates")
        return tuple(
            (tidy_number(s + i * j), tidy_number(s + i * j + r - 1))
            for i, s, j, r in zip(index, self.start, self.jump, self.size)
        )

    def through(self, layer: ResolvedConv) -> ReceptiveField:
        """The field of ``layer``'s output cells, given this field for its input."""
        if layer.rank != self.rank:
            raise ValueError(
                f"layer has {layer.rank} spatial axes but the field has {self.rank}"
            )
        spec = layer.spec
        sizes, jumps, starts = [], [], []
        for axis in range(self.rank):
            k_eff = layer.effective_kernel[axis]
            s = spec.strides[axis]
            lo = layer.padding[axis][0]
            r, j, start = self.size[axis], self.jump[axis], self.start[axis]
            if spec.transposed:
                # stride-1 window over the input with S - 1 zeros between cells
                step = Fraction(j, s) if isinstance(j, int) else j / s
                sizes.append(tidy_number(r + (k_eff - 1) * step))
                jumps.append(tidy_number(step))
                starts.append(tidy_number(start - lo * step))
            else:
                sizes.append(tidy_number(r + (k_eff - 1) * j))
                jumps.append(tidy_number(j * s))
                starts.append(tidy_number(start - lo * j))
        return ReceptiveField(tuple(sizes), tuple(jumps), tuple(starts))

    def padded(self, padding: Sequence[tuple[int, int]]) -> ReceptiveField:
        """After adding ``(lo, hi)`` cells per axis (negative: cropping), no window."""
        return ReceptiveField(
            self.size,
            self.jump,
            tuple(tidy_number(s - lo * j) for s, j, (lo, _) in zip(self.start, self.jump, padding)),
        )

    def to_dict(self) -> dict[str, list[str | int]]:
        def plain(values: tuple[Number, ...]) -> list[str | int]:
            return [v if isinstance(v, int) else str(v) for v in values]

        return {"size": plain(self.size), "jump": plain(self.jump), "start": plain(self.start),
                "center": plain(self.center)}


def stack_fields(layers: Sequence[ResolvedConv]) -> list[ReceptiveField]:
    """The field after each layer of a chain (each resolved on the previous output).

    >>> from convarith import ConvSpec
    >>> f = stack_fields([ConvSpec(3, dilation=d, padding="same").resolve(64) for d in (1, 2, 4)])
    >>> f[-1].size
    (15, 15)
    """
    if not layers:
        return []
    check_layers(len(layers))
    field = ReceptiveField.identity(layers[0].rank)
    fields = []
    for layer in layers:
        field = field.through(layer)
        fields.append(field)
    return fields


def exact_field(layers: Sequence[ResolvedConv], out_index: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The input cells (per axis, sorted) that output cell ``out_index`` of a chain reads.

    Walks each layer's footprint back to its input, one axis at a time (every
    layer here is separable per axis). Padding cells read nothing unless the
    padding mode copies an input cell (reflect, replicate, circular), which
    then counts.

    >>> from convarith import ConvSpec
    >>> exact_field([ConvSpec(3, strides=2, padding="same").resolve(6)], (0, 2))
    ((0, 1, 2), (4, 5))
    """
    if not layers:
        raise ValueError("layers must hold at least one resolved convolution")
    rank = layers[-1].rank
    if len(out_index) != rank:
        raise ValueError(f"out_index {tuple(out_index)} must have {rank} coordinates")
    result = []
    for axis in range(rank):
        cells = {int(out_index[axis])}
        for layer in reversed(layers):
            reached: set[int] = set()
            for cell in cells:
                for tap in layer.axis_taps(axis, cell):
                    if tap.source is not None:
                        reached.add(tap.source[0])
            cells = reached
        result.append(tuple(sorted(cells)))
    return tuple(result)
