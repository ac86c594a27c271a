"""retainrl: interference-aware RL with verifiable rewards for code models.

Data flows one way: tasks -> rollouts -> verdicts -> advantages -> per-skill gradients
-> projected update -> metrics -> report. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
