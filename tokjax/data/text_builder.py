"""The TFDS builder base shared by our text datasets: one `{'text': bytes}` per document."""
from __future__ import annotations

import tensorflow_datasets as tfds


class TextBuilder(tfds.core.GeneratorBasedBuilder):
  """Subclasses implement `split_documents` -> {split: [(key, text bytes), ...]}."""

  VERSION = tfds.core.Version("1.0.0")
  # No checksums file sits next to our modules. Saying so also skips a TFDS
  # 4.9.10 probe that imports the undeclared `importlib_resources` package.
  code_path = None
  HOMEPAGE = ""

  def split_documents(self, dl_manager) -> dict[str, list[tuple[str, bytes]]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        homepage=self.HOMEPAGE or None,
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(docs)
            for split, docs in self.split_documents(dl_manager).items()}

  def _generate_examples(self, docs):
    for key, text in docs:
      yield key, {"text": text}
