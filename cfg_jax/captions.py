"""Captions for Fashion-MNIST from its class names and from attributes measured on each image,
and the scores that check generated images against what their prompt asked for.

Attributes are pure NumPy functions of uint8 images (N, H, W[, 1]): `brightness` (mean grey
level of the garment's pixels), `width` (mean garment pixels per occupied row) and `texture`
(mean absolute step between neighbouring garment pixels). Each is cut into low / middle / high
at the training set's terciles (`thresholds`); a caption names the low or high level of some of
them ("dark", "wide", "smooth", …) with a synonym, the class with a synonym, in one of several
templates. TRAIN_TEMPLATES make the training captions; HELDOUT_TEMPLATES are never trained on
and make the evaluation prompts. The same functions score samples (`attribute_agreement`).

A training caption is a pure function of (seed, example index, epoch), so a resumed run sees
the captions it would have seen.
"""
import numpy as np

FOREGROUND = 32   # grey levels above this belong to the garment
LOW, MIDDLE, HIGH = 0, 1, 2

CLASS_WORDS = (
    ('t-shirt', 'tee', 'top', 'tee shirt'),
    ('pair of trousers', 'pair of pants', 'pair of slacks'),
    ('pullover', 'sweater', 'jumper'),
    ('dress', 'frock', 'gown'),
    ('coat', 'jacket', 'overcoat'),
    ('sandal', 'flip-flop', 'strappy sandal'),
    ('shirt', 'button-up shirt', 'blouse'),
    ('sneaker', 'trainer', 'running shoe'),
    ('bag', 'handbag', 'purse'),
    ('ankle boot', 'boot', 'bootie'),
)

# {a}: "a" or "an" for the word after it; {adjs}: adjectives before the noun; {pred}: the same
# joined by "and" after it (templates with {pred} are used only when an attribute is named).
TRAIN_TEMPLATES = (
    '{a} {adjs} {noun}',
    '{adjs} {noun}',
    'a photo of {a} {adjs} {noun}',
    'an image of {a} {adjs} {noun}',
    'a picture of {a} {adjs} {noun}',
    '{a} {noun} that is {pred}',
    '{a} {adjs} {noun} on black',
)
HELDOUT_TEMPLATES = (
    'a grey shot of {a} {adjs} {noun}',
    'this {noun} is {pred}',
)


def _grey(images):
  x = np.asarray(images)
  if x.dtype != np.uint8:
    raise TypeError(f'attributes are measured on uint8 images, got {x.dtype}')
  return x.reshape(x.shape[:3]).astype(np.float32)


def brightness(images):
  """(N,) mean grey level of the garment's pixels (0 for an empty image)."""
  x = _grey(images)
  fg = x > FOREGROUND
  return (x * fg).sum((1, 2)) / np.maximum(fg.sum((1, 2)), 1)


def width(images):
  """(N,) mean number of garment pixels in the rows that have any."""
  fg = _grey(images) > FOREGROUND
  return fg.sum((1, 2)) / np.maximum(fg.any(2).sum(1), 1)


def texture(images):
  """(N,) mean |difference| between horizontally or vertically adjacent garment pixels."""
  x = _grey(images)
  fg = x > FOREGROUND
  dx, mx = np.abs(np.diff(x, axis=2)), fg[:, :, 1:] & fg[:, :, :-1]
  dy, my = np.abs(np.diff(x, axis=1)), fg[:, 1:, :] & fg[:, :-1, :]
  total = (dx * mx).sum((1, 2)) + (dy * my).sum((1, 2))
  return total / np.maximum(mx.sum((1, 2)) + my.sum((1, 2)), 1)


# name: (measure, words for the low level, words for the high level)
ATTRIBUTES = {
    'brightness': (brightness, ('dark', 'dim'), ('light', 'pale', 'bright')),
    'width': (width, ('narrow', 'slim', 'thin'), ('wide', 'broad', 'bulky')),
    'texture': (texture, ('smooth', 'plain'), ('textured', 'patterned', 'detailed')),
}


def measures(images):
  """{attribute: (N,) value} of every attribute."""
  return {name: f(images) for name, (f, _, _) in ATTRIBUTES.items()}


def thresholds(values):
  """{attribute: (t₁, t₂)}, the terciles of each attribute's `measures` over the training set."""
  return {name: tuple(float(t) for t in np.quantile(v, [1 / 3, 2 / 3]))
          for name, v in values.items()}


def levels(values, cuts):
  """{attribute: (N,) LOW, MIDDLE or HIGH} of `measures` under the terciles `cuts`."""
  return {name: np.digitize(v, cuts[name]).astype(np.int8) for name, v in values.items()}


def _article(word):
  return 'an' if word[0] in 'aeiou' else 'a'


def caption(rng, label, levels_row, templates):
  """One caption and the attribute levels it names ({attribute: LOW or HIGH}).

  levels_row: {attribute: level} of the image. Each low or high attribute is named with
  probability 1/2, in random order, with a random synonym; the class with a random synonym.
  """
  named = {a: int(l) for a, l in levels_row.items() if l != MIDDLE and rng.random() < 0.5}
  order = rng.permutation(sorted(named)).tolist()
  words = [rng.choice(ATTRIBUTES[a][1 if named[a] == LOW else 2]) for a in order]
  usable = [t for t in templates if words or '{pred}' not in t]
  template = usable[rng.integers(len(usable))]
  noun = rng.choice(CLASS_WORDS[label])
  adjs = ' '.join(words)
  after_a = (adjs or noun)
  text = template.format(a=_article(after_a), adjs=adjs, noun=noun, pred=' and '.join(words))
  return ' '.join(text.split()), named


class Captioner:
  """Training captions for a labelled image set: `captioner(index, epoch)` is a pure function
  of (seed, index, epoch). values: the images' `measures`, cut at `cuts` once."""

  def __init__(self, values, labels, cuts, seed, templates=TRAIN_TEMPLATES):
    self._labels = np.asarray(labels)
    self._levels = levels(values, cuts)
    self._seed, self._templates = seed, templates

  def __call__(self, index, epoch):
    rng = np.random.default_rng([self._seed, int(index), int(epoch)])
    row = {a: v[index] for a, v in self._levels.items()}
    return caption(rng, int(self._labels[index]), row, self._templates)[0]


def evaluation_prompts(images, labels, cuts, n, seed=0, templates=HELDOUT_TEMPLATES):
  """n evaluation prompts from `templates` (by default the held-out ones, never trained on), each
  the caption of a real image (so the attribute combinations are ones that occur), classes
  balanced.

  Returns (prompts, labels (n,), requested {attribute: (n,) LOW, HIGH, or −1 if not named}).
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  k = int(labels.max()) + 1
  pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(k)]
  index = np.array([pools[i % k][i // k % len(pools[i % k])] for i in range(n)])
  image_levels = levels(measures(np.asarray(images)[index]), cuts)
  prompts, requested = [], {a: np.full(n, -1, np.int8) for a in ATTRIBUTES}
  for i, j in enumerate(index):
    text, named = caption(np.random.default_rng([seed, int(j)]), int(labels[j]),
                          {a: v[i] for a, v in image_levels.items()}, templates)
    prompts.append(text)
    for a, level in named.items():
      requested[a][i] = level
  return prompts, labels[index].astype(np.int32), requested


def attribute_agreement(images, requested, cuts):
  """{attribute: (share of samples at the level their prompt named, number named)}; the share
  is NaN where no prompt named the attribute. images: uint8 samples."""
  measured = levels(measures(images), cuts)
  out = {}
  for a, want in requested.items():
    named = want >= 0
    count = int(named.sum())
    out[a] = (float(np.mean(measured[a][named] == want[named])) if count else float('nan'), count)
  return out


def level_shares(images, cuts):
  """{attribute: (share LOW, share MIDDLE, share HIGH)} of uint8 `images`."""
  return {a: tuple(float(np.mean(v == level)) for level in (LOW, MIDDLE, HIGH))
          for a, v in levels(measures(images), cuts).items()}


def attribute_of(word):
  """(attribute, LOW or HIGH) that `word` names, e.g. 'dark' -> ('brightness', LOW); None if
  no attribute has it."""
  for a, (_, low, high) in ATTRIBUTES.items():
    if word in low or word in high:
      return a, LOW if word in low else HIGH
  return None


def class_prompts(labels):
  """The plainest prompt for each class label: "a t-shirt", "an ankle boot", …"""
  return [f'{_article(CLASS_WORDS[c][0])} {CLASS_WORDS[c][0]}' for c in np.asarray(labels).tolist()]
