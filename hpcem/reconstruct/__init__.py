"""3D reconstruction from particles with known poses: direct Fourier inversion
(:mod:`~hpcem.reconstruct.fourier`, Cython kernel ``backproject``), point-group symmetry
(:mod:`~hpcem.reconstruct.symmetry`), the MPI step body (:mod:`~hpcem.reconstruct.mpi`)
and simulated particles to test them (:mod:`~hpcem.reconstruct.simulate`)."""
