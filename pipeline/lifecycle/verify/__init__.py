"""`mll23 verify`: a release directory (local), a published release on the Hub (remote), the stamp of a passed verify."""
