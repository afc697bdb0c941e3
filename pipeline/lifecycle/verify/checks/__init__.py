"""The checks of `mll23 verify`, a module per part of a release; `pipeline.lifecycle.verify.registry` orders them."""
