"""The predictive family: contrastive prediction of one part of an example from another (CPC, Deep InfoMax), each
method in its own file."""
