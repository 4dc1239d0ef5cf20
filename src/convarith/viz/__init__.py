"""Pictures of convolutions: frames as data, then GIF, APNG, SVG and PNG.

>>> from convarith import ConvSpec
>>> from convarith.viz import animate
>>> len(animate(ConvSpec(3), (5, 5)))
9
"""

from .animation import FORMATS, Animation, Still, animate
from .frames import Frame, GridCell, Storyboard, build_frames

__all__ = ["animate", "Animation", "Still", "FORMATS", "Frame", "GridCell", "Storyboard", "build_frames"]
