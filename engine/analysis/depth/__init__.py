"""Choosing Bob's retrain-from depth before paying for the sweep: predictors of the best depth
(one module each, `registry.PREDICTORS`), scored against measured sweeps (`scoring`), as
`engine analyze choose-depth DIR` (`evaluate`) and `engine choose-depth` (`recommend`).
README "Choosing the depth"."""
