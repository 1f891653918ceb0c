"""Scale-out on existing engines: torchrun/DDP for training, Ray for batch inference.

* :mod:`medseg.distributed.ddp` - what :func:`medseg.training.train` needs to run as one of
  several ``torchrun`` processes (process group from the environment, per-rank sampling,
  sharded validation, rank-0-only writes). Needs only torch.
* :mod:`medseg.distributed.ray_backend` - ``medseg-predict --backend ray``: cases spread over
  Ray actors, each loading the model once. Ray is imported only when it is used (the
  ``distributed`` extra installs it).

Nothing is imported here, so ``import medseg.distributed`` never pulls in Ray.
"""
