"""Integrations: retainrl's verifiers and skill-safe step inside other people's trainers.

    retainrl.integrations.rewards   TRL-style reward functions on the Sandbox (one per skill, routed
                                    by a `skill` column) and Task <-> datasets.Dataset rows
    retainrl.integrations.trl       attach_skill_safety(trainer, ...): the skill-safe step as a
                                    transformers/TRL TrainerCallback (pip install 'retainrl[trl]')

Like train/, this package sits at the top: it wires data, policy, verify and safety; nothing in
retainrl imports it. Nothing is imported here, so `import retainrl` never needs TRL.
"""
