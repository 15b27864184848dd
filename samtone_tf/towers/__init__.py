"""Towers: encoder layers (:mod:`~.encoders`), the spec factory (:mod:`~.specs`), the
offline pretrained encoder (:mod:`~.pretrained`), pooling, :class:`~.model.DualEncoder`,
gradient caching (:mod:`~.gradcache`) and texts -> embeddings (:mod:`~.embedders`).

Importing the package imports none of them; import the modules themselves.
"""
