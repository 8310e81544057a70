"""Models: the catalogue and resolve(), the one loader, one backend per library, acceleration."""
