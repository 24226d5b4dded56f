"""Jobs on several GPUs and several PCs, on Ray (the optional ``sdweb[cluster]`` extra).

Imported only when ``--workers`` or ``--ray-address`` (or ``webui.py worker``) asks for it: without those
flags sdweb never imports Ray. ``connect`` starts or joins the cluster (token auth, loopback by default),
``pool`` is the :class:`~sdweb.services.workers.JobWorkers` on worker actors, ``remote_engine`` the engine
a job sees there, ``actor`` the worker process side, ``affinity`` the choice of worker, ``node`` the
``webui.py worker`` helper around ``ray start``.
"""
