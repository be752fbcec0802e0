"""grammar: the Dockerfile language (lark grammar, typed AST, word expansion, errors).

No I/O and no imports of other pybuild packages; third-party: lark only.
"""
