r"""The per-example probes of pre-memorization train accuracy.

Kang et al. (arXiv 2411.07681) measure, for each training example (a prompt and its target
reasoning trace), two numbers at every checkpoint:

- **the perplexity of the target trace** given the prompt (teacher forcing):
  :func:`target_perplexity` (:mod:`.perplexity`). An example counts as *memorized* once it falls to a
  threshold;
- **the accuracy of sampled answers**: ``k`` completions of the prompt (paper: ``k = 5``,
  temperature 0.8, top-p 0.95, stop at ``"\nDone."``: :class:`SamplingConfig`), graded against the
  reference answer. The sampling is done by a :class:`CompletionSampler`; :class:`HFSampler`
  (:mod:`.sampling`) is the default one, built on Hugging Face ``model.generate``.

and, for the robustness finding, the accuracy under prompt perturbations (:mod:`.robustness`).

Both probes run the model in ``eval()`` mode under :func:`torch.inference_mode` and restore every
submodule's previous training flag afterwards, even when they raise (:mod:`.models`). Sampling is
seeded *per example* (:mod:`.seeds`): the completions of a prompt depend only on the prompt and its
seed, not on which other prompts share its batch, on the batch size, or on the rank that samples it.
See ``docs/probes.md`` for the batching strategy and how to plug in another generation engine.
"""

from lightning_premem.probes.perplexity import target_perplexity
from lightning_premem.probes.robustness import DEFAULT_PERTURBATIONS, perturb_prompt, robustness_accuracy
from lightning_premem.probes.sampling import DEFAULT_STOP, HFSampler, SamplingConfig
from lightning_premem.protocols import CompletionSampler
from lightning_premem.tokenization import encode_prompt_target

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "DEFAULT_STOP",
    "CompletionSampler",
    "HFSampler",
    "SamplingConfig",
    "encode_prompt_target",
    "perturb_prompt",
    "robustness_accuracy",
    "target_perplexity",
]
