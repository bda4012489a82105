"""Channel pruning: ACSL / CAP / baseline sparsity learning, selection, surgery, plans and recovery.

Stages (pipeline.py): sparsity learning -> selection (select.py) -> physical removal (surgery.py,
Torch-Pruning) -> recovery (recover.py); each writes its artifact and a JSON record.
"""
