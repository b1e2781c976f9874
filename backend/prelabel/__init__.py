"""Pre-labelling a whole Label Studio project in bulk, on Ray (``python -m backend.prelabel``).

Label Studio's "Retrieve predictions" asks the backend task by task, synchronously, within
``ML_TIMEOUT_PREDICT`` (100 s a call by default): fine for a page of tasks, not for 100,000 images.
This job reads the project through Label Studio's API, predicts the tasks that lack a prediction of
the current model version on Ray workers (each the backend's own model class with one model set),
and imports the predictions in bulk. See docs/prelabel.md.

* :mod:`.client`: the Label Studio API calls (tasks in pages, bulk import);
* :mod:`.worker`: ``TaskPredictor``, what one worker runs (``SegmentationMLBackend.predict_task``);
* :mod:`.engines`: ``RayPool`` (actors) and ``LocalPool`` (threads of this process);
* :mod:`.job`: the driver (skip, dispatch, retry, import, state file);
* :mod:`.service`: ``POST /prelabel`` of the backend runs the same job in the background.
"""
