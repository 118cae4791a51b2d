"""Reference-free 2D classification: multi-reference alignment (:mod:`.align2d`), the
iteration (:mod:`.em2d`) and its MPI step body (:mod:`.mpi`)."""
