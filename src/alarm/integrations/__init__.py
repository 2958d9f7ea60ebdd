"""ALaRM's combined reward inside other trainers: TRL (GRPO/RLOO), OpenRLHF (remote reward server), verl."""
