"""Convolution algorithms, one module each; every module registers itself on import.

:func:`convarith.engine.dispatch.available_algorithms` imports every module in
this package, so adding an algorithm is adding a module that calls
:func:`convarith.engine.dispatch.register_algorithm`.
"""
