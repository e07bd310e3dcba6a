"""Limited-label accuracy benchmark of S²Fin against baselines, with per-module ablations.

    python3 -m bench.accuracy [--quick] [--seeds 5] [--n 5,10,20]
        [--scenes urban,agricultural,msi-sar,sen1floods11,eolearn] [--dataset DIR]
        [--out docs/benchmarks.md]

Modules: ``scenes`` (generated and real scenes as GeoTIFFs in a temporary folder), ``protocol``
(the N-per-class draw and the test pixels), ``methods`` (random forest, RBF-SVM, a small CNN,
S²Fin and its ablations, all fed from the same patches), ``report`` (docs/benchmarks.md),
``run`` (the command line and the loop).

Everything that cuts patches, preprocesses, samples or scores comes from ``s2fin_cli``
(``extract_patch_set``, ``fit_preprocessor``, ``apply_protocol``, ``fit``,
``AccuracyReport``/``mean_std``); this package only orchestrates and writes the report.
"""
