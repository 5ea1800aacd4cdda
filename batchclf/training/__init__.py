"""Custom classifiers: labelled data in, a model folder that ``batchclf run --model`` uses out.

``dataset`` reads labelled images (a ``tags.tsv`` or class folders), ``features`` extracts pooled
features through the same job as ``run``, ``logistic`` and ``finetune`` fit the classifier,
``artifact`` saves the model folder as one unit, ``train`` drives them, ``evaluate`` and ``metrics``
score a model against labels. Nothing in the run pipeline imports this package.
"""
