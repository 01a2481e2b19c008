"""hes_mpi: data-parallel BGD and Hybrid-ES training of MLPs over MPI, with measured costs."""

__version__ = "0.1.0"
