"""Remedies: what to change, each checked on a copy of the model where it can be.

``proposal`` asks each family (``activations``, ``initialization``, ``architecture``,
``training``, ``recurrent``) for candidates the evidence supports; ``edits`` and ``spec_edits``
make a remedy's change to a copy of a loaded model or a spec document; ``verification``
re-probes each edited copy and ranks the remedies by what that showed; ``repair`` writes a
verified re-initialization back into the user's file.
"""
