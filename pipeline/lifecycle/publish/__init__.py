"""`mll23 publish`: the plan (what goes where on the Hub) and the transport (Xet or LFS, one commit per branch)."""
