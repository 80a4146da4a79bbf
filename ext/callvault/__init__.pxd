# The C-level interfaces of the compiled modules callvault._* (ext/_*.pyx), for
# cimport by another compiled module (ext/_leg.pyx): ``from callvault._rtp cimport
# JitterBuffer``. Cython finds each module's .pxd under its package name here.
