# Copyright (c) autoreg_monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""MONAI Label app serving autoreg_monai registration bundles (docs/monai_label.md).

Its options are in ``config.json`` next to this file (``bundles``, ``results``, ``prealign``, ``trust_bundles``);
``--conf key value`` overrides them. Start it with ``monailabel start_server --app <this folder> --studies
<images>``; MONAI Label picks up :class:`RegistrationApp` from this file.
"""

from autoreg_monai.label.registration_app import RegistrationApp

__all__ = ["RegistrationApp"]
