<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" nodataColor="">
      <colorPalette>
        <paletteEntry value="1" color="#8c8c8c" alpha="255" label="Road"/>
        <paletteEntry value="2" color="#46465a" alpha="255" label="Parking lot"/>
        <paletteEntry value="3" color="#be3c3c" alpha="255" label="Roof (bitumen)"/>
        <paletteEntry value="4" color="#ebaa96" alpha="255" label="Roof (concrete)"/>
        <paletteEntry value="5" color="#e1e1eb" alpha="255" label="Roof (membrane)"/>
        <paletteEntry value="6" color="#196423" alpha="255" label="Trees"/>
        <paletteEntry value="7" color="#78af3c" alpha="255" label="Shrubs"/>
        <paletteEntry value="8" color="#afeb7d" alpha="255" label="Grass"/>
        <paletteEntry value="9" color="#d7be32" alpha="255" label="Row crops"/>
        <paletteEntry value="10" color="#966937" alpha="255" label="Bare soil"/>
        <paletteEntry value="11" color="#286edc" alpha="255" label="Water"/>
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
