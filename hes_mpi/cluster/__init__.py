"""An emulated cluster on one host: nodes in network namespaces joined by rate-limited veth links to a
bridge, MPI over real TCP between them (``hes-mpi cluster up|status|run|fault|down``; docs/cluster.md).

:mod:`.state` is the cluster's description (a JSON file that later commands read); :mod:`.files` keeps its
folder and files safe for root, who executes the launcher in it; :mod:`.net` makes and removes the
namespaces, links, qdiscs and cgroups; :mod:`.launch` runs an MPI job across the nodes; :mod:`.faults` takes
links down, slows and kills nodes; :mod:`.slurm` runs Slurm on this host or on the nodes.
"""
