"""The four commands (vae-train, vae-eval, vae-sample, vae-report): short orchestrators over the
layers below, the checks of the values users type, and one error exit."""
