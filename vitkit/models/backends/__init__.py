"""One module per library. Heavy imports happen inside these modules only, and only when a model loads."""
