"""Step bodies that run on many MPI ranks (mpi4py); launched by hpcem.execution.mpi."""
