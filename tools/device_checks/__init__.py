"""The checks of ``tools/gpu_check.py``: each is a function of a :class:`common.Context`
(device and sizes), so ``--cpu`` runs the same code at tiny sizes."""
