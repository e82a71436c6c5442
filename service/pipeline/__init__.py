"""From a request body to an answer, framework-free: media types and codecs, the latent cache, the
off-loop work, and the encode and decode operations that run them."""
