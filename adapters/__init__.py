"""Protocol adapters, installed as ``csp_bus.adapters.<name>``.

Each adapter is a sans-IO ``protocol.py`` plus thin Trio glue, registered in the
entry-point group ``csp_bus.adapters`` so ``csp-bus serve --adapter NAME`` finds it.
"""
