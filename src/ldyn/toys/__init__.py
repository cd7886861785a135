"""Two small worlds the paper builds its intuition on: the squeezing toy and classifier dynamics on digits."""
